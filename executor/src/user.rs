//! Resolving a Dockerfile `USER` against the image's /etc/passwd and /etc/group.

use crate::error::{Error, Result};
use crate::view::RootfsView;

/// The identity a step runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups (from /etc/group membership), without `gid`.
    pub additional_gids: Vec<u32>,
    /// The home directory from /etc/passwd, `/` when unknown; used for `HOME`.
    pub home: String,
}

impl User {
    /// root, as when no `USER` is given.
    pub fn root() -> Self {
        User {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/root".to_owned(),
        }
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: fields.first()?.to_string(),
                uid: fields.get(2)?.parse().ok()?,
                gid: fields.get(3)?.parse().ok()?,
                home: fields.get(5).map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: fields.first()?.to_string(),
                gid: fields.get(2)?.parse().ok()?,
                members: fields
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user[:group]` the way Docker and runc do: a name must exist in
/// /etc/passwd; a numeric uid need not (its gid is then 0 and its home `/`); the
/// group, when given, is a name from /etc/group or a number, otherwise the
/// user's primary group. Supplementary groups come from /etc/group membership.
/// An empty string means root.
pub fn resolve_user(view: &RootfsView, spec: &str) -> Result<User> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(User::root());
    }
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = view
        .read_file("/etc/passwd")?
        .map(|bytes| parse_passwd(&String::from_utf8_lossy(&bytes)))
        .unwrap_or_default();
    let groups = view
        .read_file("/etc/group")?
        .map(|bytes| parse_group(&String::from_utf8_lossy(&bytes)))
        .unwrap_or_default();

    let (uid, mut gid, name, home) = if let Ok(uid) = user_part.parse::<u32>() {
        match passwd.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone()), e.home.clone()),
            None => (uid, 0, None, String::new()),
        }
    } else {
        let entry =
            passwd
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| Error::UnknownUser {
                    user: user_part.to_owned(),
                })?;
        (
            entry.uid,
            entry.gid,
            Some(entry.name.clone()),
            entry.home.clone(),
        )
    };
    if let Some(group) = group_part.filter(|g| !g.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups
                    .iter()
                    .find(|g| g.name == group)
                    .ok_or_else(|| Error::UnknownGroup {
                        group: group.to_owned(),
                    })?
                    .gid
            }
        };
    }
    let mut additional_gids: Vec<u32> = match (&name, group_part) {
        (Some(name), None) => groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
            .map(|g| g.gid)
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids,
        home: if home.is_empty() {
            "/".to_owned()
        } else {
            home
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn view() -> (tempfile::TempDir, RootfsView) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("etc")).unwrap();
        fs::write(
            tmp.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken line\n",
        )
        .unwrap();
        fs::write(
            tmp.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\nstaff:x:50:app\n",
        )
        .unwrap();
        let view = RootfsView::new(&[tmp.path().to_path_buf()]);
        (tmp, view)
    }

    #[test]
    fn names_and_numbers() {
        let (_tmp, view) = view();
        let app = resolve_user(&view, "app").unwrap();
        assert_eq!(
            (
                app.uid,
                app.gid,
                app.additional_gids.clone(),
                app.home.as_str()
            ),
            (1000, 1000, vec![10, 50], "/home/app")
        );
        let numeric = resolve_user(&view, "4242").unwrap();
        assert_eq!(
            (numeric.uid, numeric.gid, numeric.home.as_str()),
            (4242, 0, "/")
        );
        let with_group = resolve_user(&view, "app:wheel").unwrap();
        assert_eq!((with_group.gid, with_group.additional_gids.len()), (10, 0));
        assert_eq!(resolve_user(&view, "1000:7").unwrap().gid, 7);
        assert_eq!(resolve_user(&view, "").unwrap(), User::root());
    }

    #[test]
    fn unknown_names_are_errors() {
        let (_tmp, view) = view();
        assert!(matches!(
            resolve_user(&view, "nobody"),
            Err(Error::UnknownUser { .. })
        ));
        assert!(matches!(
            resolve_user(&view, "app:nogroup"),
            Err(Error::UnknownGroup { .. })
        ));
    }
}
