//! The final filesystem of a build as one tar stream (`--output type=tar`,
//! BuildKit's tar exporter): every file the image holds, as the merged
//! layers show it, with no whiteouts and no image metadata.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use kiln_cache::{LayerBlob, Store};

use crate::error::{io_err, Error, Result};
use crate::source::{walk, SourceFs};

/// Writes the merged filesystem of `layers` to `out` as a tar: entries sorted
/// by path, relative names, numeric owners, modes, modification times,
/// symbolic links and device nodes as they are in the image. Files are read
/// straight from the layers' snapshots, not copied first.
pub fn export_filesystem_tar(
    store: &Store,
    layers: &[LayerBlob],
    out: &mut dyn Write,
) -> Result<()> {
    match crate::solve::filesystem_view(store, layers)? {
        Some(view) => tar_source(&view, out),
        None => tar::Builder::new(out)
            .into_inner()
            .and_then(|out| out.flush())
            .map_err(io_err(store.root())),
    }
}

/// Streams everything below the top of `source` (not the top itself) as a tar.
fn tar_source(source: &dyn SourceFs, out: &mut dyn Write) -> Result<()> {
    let top = source
        .entry(".", true)?
        .ok_or_else(|| Error::Invalid("the image's filesystem has no root".into()))?;
    let mut builder = tar::Builder::new(out);
    for entry in walk(source, &top)?.iter().skip(1) {
        append_entry(
            &mut builder,
            &entry.host,
            Path::new(&entry.rel),
            &entry.meta,
        )
        .map_err(io_err(&entry.host))?;
    }
    builder
        .into_inner()
        .and_then(|out| out.flush())
        .map_err(io_err(&top.host))
}

/// One file, directory, link, FIFO or device node at `path`, named `name`.
/// Sockets are left out, as every tar writer leaves them out.
fn append_entry(
    builder: &mut tar::Builder<&mut dyn Write>,
    path: &Path,
    name: &Path,
    meta: &std::fs::Metadata,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    // Access and change times say when the export ran, not what the image
    // holds: the same image always gives the same tar.
    if let Some(gnu) = header.as_gnu_mut() {
        gnu.set_atime(0);
        gnu.set_ctime(0);
    }
    let kind = meta.file_type();
    if kind.is_file() {
        return builder.append_data(&mut header, name, std::fs::File::open(path)?);
    }
    header.set_size(0);
    if kind.is_symlink() {
        header.set_entry_type(tar::EntryType::Symlink);
        return builder.append_link(&mut header, name, std::fs::read_link(path)?);
    }
    let entry_type = if kind.is_dir() {
        tar::EntryType::Directory
    } else if kind.is_fifo() {
        tar::EntryType::Fifo
    } else if kind.is_char_device() {
        tar::EntryType::Char
    } else if kind.is_block_device() {
        tar::EntryType::Block
    } else {
        return Ok(());
    };
    header.set_entry_type(entry_type);
    if kind.is_char_device() || kind.is_block_device() {
        let rdev = meta.rdev();
        header.set_device_major(nix_major(rdev))?;
        header.set_device_minor(nix_minor(rdev))?;
    }
    builder.append_data(&mut header, name, std::io::empty())
}

/// The major number of a Linux `dev_t`.
fn nix_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

/// The minor number of a Linux `dev_t`.
fn nix_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_become_sorted_tars_with_links_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::write(root.join("b/c/file"), "hello").unwrap();
        std::fs::write(root.join("a"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("b"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let mut bytes = Vec::new();
        let view = crate::views::ViewSource(kiln_executor::RootfsView::new(&[root]));
        tar_source(&view, &mut bytes).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, tar::EntryType, u32, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned());
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                    e.header().mode().unwrap(),
                    link,
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a", "b", "b/c", "b/c/file", "link"]);
        assert_eq!(entries[1].1, tar::EntryType::Directory);
        assert_eq!(entries[1].2 & 0o7777, 0o1777);
        assert_eq!(entries[4].1, tar::EntryType::Symlink);
        assert_eq!(entries[4].3.as_deref(), Some("/etc/passwd"));
    }

    #[test]
    fn device_numbers_split_as_linux_does() {
        // Numbers that need the high bits of both halves of a dev_t.
        let dev = nix::sys::stat::makedev(4099, 65539);
        assert_eq!((nix_major(dev), nix_minor(dev)), (4099, 65539));
        assert_eq!((nix_major(0x0103), nix_minor(0x0103)), (1, 3));
    }
}
