//! The executor: runs one RUN step in a Linux-namespaced sandbox and turns
//! directories into OCI layers. It knows nothing of the store: it takes
//! directories, readers and `Write` sinks.
//!
//! - [`Snapshotter`] unpacks each layer once into a directory named after its
//!   chain id, in overlayfs form (whiteouts as char devices 0:0, opaque
//!   directories as `trusted.overlay.opaque=y`); hostile paths cannot escape it.
//!   A [`SnapshotStream`] makes a snapshot from a layer tar as it is written
//!   (an import, a step whose result a later step mounts), with no blob to read back.
//! - [`RootfsView`] reads the merged filesystem of a snapshot stack without
//!   mounting; [`resolve_user`] resolves `USER` against its /etc/passwd and /etc/group.
//! - [`resolve`] is the one path resolver of kiln: symlinks followed inside a
//!   [`ScopedTree`]'s root (a rootfs view, the solver's build context), never
//!   into the host; [`open_resolved`] opens what it found without following links.
//! - [`run`] runs a [`RunSpec`] over the snapshots and returns the [`Upper`] dir,
//!   which [`Upper::write_layer`] turns into a layer tar; [`write_dir_layer`]
//!   does the same for a plain directory (COPY).
//! - [`check_binfmt`] and [`setup_binfmt`] handle foreign architectures (qemu-user).
//! - [`enter_user_namespace`] makes an ordinary user's kiln root of a user
//!   namespace (rootless kiln); the sandbox and snapshots adapt to one.
//!
//! # Process model
//!
//! [`run`] is called from many threads at once (the solver runs independent
//! steps in parallel) and from `cargo test` binaries, so it neither re-executes
//! a helper binary (a test harness has no hook for that) nor uses a glibc
//! `fork()` whose child might inherit locks held by other threads. Instead the
//! calling thread prepares everything the sandbox will need, as plain data: every
//! path, argument and environment string as a `CString`, the `execve` pointer
//! arrays, the list of mounts. It then creates the sandbox's init with a raw
//! `clone(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC [| CLONE_NEWNET])`
//! that behaves like `fork`. The child only interprets the prepared plan with
//! syscalls: it never allocates, takes a lock or panics, and issues the setuid
//! family as raw syscalls (glibc's wrappers would try to signal threads that
//! only exist in the parent). Its first act is to move its five descriptors to
//! 0-4 and close every other one, so pipes of steps running concurrently in
//! other threads are never held open by this sandbox.
//!
//! On a [`PrivateNetwork`] the init joins the build's network namespace with
//! `setns` just before that (its descriptor is part of the plan), instead of
//! a `CLONE_NEWNET`. The init (pid 1 of its pid namespace) makes every mount private, mounts the
//! overlay on the scratch dir (snapshots as lower dirs, a fresh upper dir, the
//! `volatile` option since the upper dir is thrown away), a fresh /proc (its
//! kernel knobs read-only), a minimal /dev, read-only /sys, the requested
//! mounts, and `pivot_root`s into it; the old root is detached. Mountpoints
//! missing from the image come from one more shared, read-only lower dir kept
//! beside the snapshots (with the image's metadata for their parents), so the
//! upper dir only ever holds the step's own changes. Where overlayfs cannot be
//! mounted, the merged snapshots are copied and the changes found by comparing. It then clones the step's
//! main process, which drops to Docker's default capability set, switches user,
//! sets `no_new_privs`, loads the seccomp filter the parent compiled (Docker's
//! default profile unless the spec says otherwise) and executes the program.
//! The init reaps every process
//! and, when the main one exits, kills all that remain. Nothing is mounted in
//! the host's namespace: when the init dies (also when kiln is killed:
//! `PR_SET_PDEATHSIG`), the kernel tears the namespace and its mounts down.
//! The parent streams stdout and stderr line by line, reads the init's report
//! pipe (setup failures with the errno of the failing step, then the main
//! process' exit status) and polls the [`CancelToken`] every 20 ms.

#![warn(missing_docs)]

mod binfmt;
mod cgroup;
mod child;
mod copydiff;
mod diff;
mod error;
mod files;
mod keeper;
mod mountpoints;
mod network;
mod plan;
mod resolve;
mod sandbox;
mod seccomp;
mod snapshot;
mod spec;
mod stream;
mod sys;
mod syscalls;
mod terminal;
mod user;
mod userns;
mod view;

use std::path::Path;

pub use binfmt::{check_binfmt, host_arch, is_native, qemu_name, setup_binfmt, BinfmtSetup};
pub use diff::{
    write_dir_layer, write_dir_layer_with, DiffOptions, ExtraFile, LayerSummary, Upper,
};
pub use error::{Error, Result};
pub use keeper::keep_user_namespace;
pub use network::{PrivateNetwork, PublishedPort};
pub use resolve::{
    copy_resolved, link_resolved, open_resolved, resolve, HostDir, Node, OpenDir, Resolved,
    ScopedTree,
};
pub use seccomp::{Profile, ProfileError, Seccomp};
pub use snapshot::{remove_tree, Snapshotter, SpecialFile};
pub use spec::{CancelToken, Limits, Mount, Network, OutputLine, RunSpec, Stdio, Stream, Ulimit};
pub use stream::SnapshotStream;
pub use terminal::{copy_window_size, Pty, RawMode};
pub use user::{resolve_user, User};
pub use userns::{
    check_owner_mapped, enter_user_namespace, in_user_namespace, is_rootless,
    private_network_usable, Rootless, ROOTLESS_ENV,
};
pub use view::{RootfsView, ViewEntry};

/// Runs one step in a fresh sandbox and returns the changes it made.
///
/// `scratch_dir` is a directory for this step only (created if missing, on a
/// filesystem overlayfs accepts as upper: not overlayfs itself; no `:`, `,`
/// or `\\` in its path); it receives the upper and work directories and, inside
/// the sandbox's mount namespace only, the overlay is mounted on it. Shared
/// mountpoint stubs and resolv.conf/hosts copies go to `.mountpoints/` in the
/// snapshot root (the lowers' parent). The caller removes the scratch dir with
/// [`remove_tree`] once the layer is written, also after errors. Output lines
/// go to `on_output` as they come. A non-zero exit is
/// [`Error::ExitCode`] with the last lines of output. Needs root: real, or
/// of a user namespace ([`enter_user_namespace`], rootless kiln).
pub fn run(
    spec: &RunSpec,
    scratch_dir: &Path,
    cancel: &CancelToken,
    on_output: &mut dyn FnMut(OutputLine),
) -> Result<Upper> {
    sandbox::run(spec, scratch_dir, cancel, on_output)
}

/// Turns transparent huge pages off for kiln's own memory (and the helper
/// processes it starts; a step's process gets the system's policy back
/// before it executes). kiln touches short-lived buffers briefly, and with
/// huge pages each first touch zeroed 2 MiB and every fork of a sandbox
/// copied more: a 20-step build ran 8-10% faster without them. Called once
/// at start; a failure changes only speed.
pub fn disable_huge_pages() {
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// Makes the calling thread `increment` nicer (Linux keeps niceness per
/// thread), and with it the threads and steps it starts from now on: for
/// work off a build's critical path. Only ever nicer, so it needs no
/// privilege; a thread cannot be made less nice again without one, so the
/// caller uses a thread of its own for such work.
pub fn make_this_thread_nicer(increment: u8) -> Result<()> {
    sys::add_niceness(increment).map_err(|errno| Error::Sandbox {
        step: "lower the priority of a step's thread (nice)".into(),
        errno,
    })
}

/// Compiles the seccomp filter steps with Docker's capabilities will get
/// under `seccomp`, ahead of the first step (a build calls this from a
/// thread of its own as it starts, so the compilation overlaps its other
/// start-up work; [`run`] then finds it compiled). Errors are [`run`]'s to
/// report.
pub fn prepare_seccomp(seccomp: &Seccomp) {
    plan::prepare_seccomp(seccomp);
}
