//! The step's own mounts (`RUN --mount`, `kiln run -v`).

use std::fs;

use nix::mount::MsFlags;

use super::PlanBuilder;
use crate::error::{io_err, Result};
use crate::spec::Mount;

impl PlanBuilder<'_> {
    /// Every mount of the spec, in its order, each on a mountpoint created
    /// where the image lacks one.
    pub(super) fn mounts(&mut self) -> Result<()> {
        for mount in &self.spec.mounts {
            match mount {
                Mount::Bind {
                    source,
                    target,
                    readonly,
                } => {
                    // Files, and sockets (an ssh agent's), are bound onto a file.
                    let is_file = !fs::metadata(source)
                        .map_err(io_err("inspect mount source", source))?
                        .is_dir();
                    let (_, host_target) = self.mountpoint(target, is_file)?;
                    self.ops.bind(source, &host_target, *readonly, target)?;
                }
                Mount::Tmpfs { target, size } => {
                    let (_, host_target) = self.mountpoint(target, false)?;
                    let data = size.map(|s| format!("size={s}"));
                    self.ops.mount(
                        Some("tmpfs"),
                        &host_target,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        data.as_deref(),
                        format!("mount tmpfs on {target}"),
                    )?;
                }
            }
        }
        Ok(())
    }
}
