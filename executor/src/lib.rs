//! The executor: runs one RUN step in a Linux-namespaced sandbox.
//!
//! Given the parent image's unpacked snapshots, the command, its environment and
//! mounts, it runs the step on an overlay and returns the filesystem change as an
//! OCI layer tar. Every syscall that needs `unsafe` lives in the private `sys`
//! module; the rest of the crate is safe code.
