//! Container paths as Docker joins and cleans them (WORKDIR, COPY
//! destinations, mount targets).

/// Joins `path` to the directory `base` and cleans the result like Go's
/// `path.Clean`.
pub(crate) fn join_path(base: &str, path: &str) -> String {
    // Already clean (the common case): nothing to resolve.
    if is_clean_absolute(path) {
        return path.to_string();
    }
    // `./a/b/` names what `a/b` does (a trailing slash is the caller's to keep).
    let relative = path.strip_suffix('/').unwrap_or(path);
    let relative = relative.strip_prefix("./").unwrap_or(relative);
    if !relative.starts_with('/') && clean_components(relative) && is_clean_absolute(base) {
        let path = relative;
        // Room for the trailing slash a directory destination gets back.
        let mut out = String::with_capacity(base.len() + path.len() + 2);
        out.push_str(base);
        if base != "/" {
            out.push('/');
        }
        out.push_str(path);
        return out;
    }
    clean_join(base, path)
}

/// `join_path` without the shortcuts.
pub(crate) fn clean_join(base: &str, path: &str) -> String {
    let parts = if path.starts_with('/') {
        path.split('/').chain("".split('/'))
    } else {
        base.split('/').chain(path.split('/'))
    };
    let mut kept: Vec<&str> = Vec::new();
    for part in parts {
        match part {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    let mut out = String::with_capacity(base.len() + path.len() + 1);
    if kept.is_empty() {
        out.push('/');
    }
    for part in kept {
        out.push('/');
        out.push_str(part);
    }
    out
}

/// Whether `path` is absolute and what Go's `path.Clean` returns for it.
pub(crate) fn is_clean_absolute(path: &str) -> bool {
    match path.strip_prefix('/') {
        Some("") => true,
        Some(rest) => clean_components(rest),
        None => false,
    }
}

/// Whether `path` is `/`-separated names that are neither empty, `.` nor `..`.
pub(crate) fn clean_components(path: &str) -> bool {
    // A byte scan ('/' and '.' are ASCII, so never part of a wider
    // character): paths are checked for every WORKDIR, COPY and mount.
    path.as_bytes()
        .split(|&b| b == b'/')
        .all(|c| !matches!(c, b"" | b"." | b".."))
}
