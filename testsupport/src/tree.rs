//! A listing of a directory tree with everything a snapshot's reader sees,
//! for tests that compare snapshots made in different ways.

use std::path::Path;

/// Every entry under `root`, one line each in path order: type, mode, owner,
/// mtime, size, content fingerprint or link target or device, xattrs (overlayfs'
/// too) and hard-link group: two trees with the same listing are the same
/// for every reader of a snapshot.
pub fn tree_listing(root: &Path) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut paths = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    let mut first_of_inode = std::collections::HashMap::new();
    let mut out = String::new();
    for path in paths {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let kind = meta.file_type();
        let what = if kind.is_file() {
            format!("{:016x}", fnv1a(&std::fs::read(&path).unwrap()))
        } else if kind.is_symlink() {
            format!("-> {}", std::fs::read_link(&path).unwrap().display())
        } else if kind.is_char_device() || kind.is_block_device() {
            format!("dev {}", meta.rdev())
        } else {
            String::new()
        };
        let mut xattrs: Vec<String> = xattr::list(&path)
            .map(|names| {
                names
                    .map(|name| {
                        let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
                        format!(
                            "{}={}",
                            name.to_string_lossy(),
                            String::from_utf8_lossy(&value)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        let link = if kind.is_file() && meta.nlink() > 1 {
            first_of_inode
                .entry(meta.ino())
                .or_insert_with(|| rel.clone())
                .clone()
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{rel} {:#o} {}:{} {} {} {what} [{}] {link}\n",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            // A whiteout's time is when it was made: overlayfs reads none of it.
            if kind.is_char_device() && meta.rdev() == 0 {
                0
            } else {
                meta.mtime()
            },
            meta.len(),
            xattrs.join(","),
        ));
    }
    out
}

/// FNV-1a: a content fingerprint that needs no dependency.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The lines in which two listings differ, for assertion messages.
pub fn listing_diff(left: &str, right: &str) -> String {
    let (l, r): (Vec<&str>, Vec<&str>) = (left.lines().collect(), right.lines().collect());
    let only = |a: &[&str], b: &[&str]| -> Vec<String> {
        a.iter()
            .filter(|line| !b.contains(line))
            .map(|line| line.to_string())
            .collect()
    };
    format!(
        "only left: {:?}\nonly right: {:?}",
        only(&l, &r),
        only(&r, &l)
    )
}
