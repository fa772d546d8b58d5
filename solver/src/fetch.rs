//! ADD from http(s) URLs: download once per build into the store's temporary
//! directory, verify `--checksum`, and give the file's sha256 to the cache key.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{io_err, poisoned, Error, Result};

/// Whether an ADD source is a URL rather than a context path.
pub(crate) fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The file name a downloaded URL gets: the last segment of its path, as
/// Docker does (`index.html`-like defaults are not invented).
pub(crate) fn url_file_name(url: &str) -> Result<String> {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = without_query
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(without_query);
    let path = after_scheme.split_once('/').map(|(_, p)| p).unwrap_or("");
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => Ok(name.to_string()),
        _ => Err(Error::Copy(format!(
            "ADD {url}: the URL does not end in a file name; give the destination as a file path, not a directory"
        ))),
    }
}

/// A downloaded file and its sha256 (`sha256:<hex>`).
#[derive(Debug, Clone)]
pub(crate) struct Download {
    pub(crate) path: PathBuf,
    pub(crate) digest: String,
}

/// Downloads of one build, shared by the steps that ADD the same URL.
#[derive(Debug)]
pub(crate) struct Downloads {
    dir: tempfile::TempDir,
    done: Mutex<HashMap<String, Download>>,
    /// ADD of git repositories: checkouts by URL and --keep-git-dir.
    checkouts: Mutex<HashMap<(String, bool), crate::remote_context::Checkout>>,
}

impl Downloads {
    pub(crate) fn new(tmp_dir: &Path) -> Result<Downloads> {
        let dir = tempfile::Builder::new()
            .prefix("downloads-")
            .tempdir_in(tmp_dir)
            .map_err(io_err(tmp_dir))?;
        Ok(Downloads {
            dir,
            done: Mutex::new(HashMap::new()),
            checkouts: Mutex::new(HashMap::new()),
        })
    }

    /// The checkout of an ADD'ed git repository (`URL#REF[:DIR]`), made the
    /// first time a step asks for it in this build.
    pub(crate) fn git(
        &self,
        url: &str,
        keep_git_dir: bool,
    ) -> Result<crate::remote_context::Checkout> {
        let key = (url.to_string(), keep_git_dir);
        let mut checkouts = self
            .checkouts
            .lock()
            .map_err(poisoned("list of git checkouts"))?;
        if let Some(found) = checkouts.get(&key) {
            return Ok(found.clone());
        }
        let crate::ContextSource::Git(git) = crate::ContextSource::parse(url) else {
            return Err(Error::Copy(format!("ADD {url}: not a git repository URL")));
        };
        let dest = self.dir.path().join(format!("git-{}", checkouts.len()));
        let checkout = git.checkout(&dest, keep_git_dir)?;
        checkouts.insert(key, checkout.clone());
        Ok(checkout)
    }

    /// The file behind `url`, downloading it the first time; with
    /// `checksum` (`sha256:<hex>`) a different content is an error.
    pub(crate) fn get(&self, url: &str, checksum: Option<&str>) -> Result<Download> {
        let existing = self
            .done
            .lock()
            .map_err(poisoned("list of downloads"))?
            .get(url)
            .cloned();
        let download = match existing {
            Some(found) => found,
            None => {
                let fetched = fetch(url, self.dir.path())?;
                self.done
                    .lock()
                    .map_err(poisoned("list of downloads"))?
                    .insert(url.to_string(), fetched.clone());
                fetched
            }
        };
        if let Some(expected) = checksum {
            let expected = expected.trim();
            if !expected.starts_with("sha256:") {
                return Err(Error::Copy(format!(
                    "ADD --checksum={expected}: only sha256:<64 hex digits> checksums are supported"
                )));
            }
            if !expected.eq_ignore_ascii_case(&download.digest) {
                return Err(Error::Copy(format!(
                    "checksum mismatch for {url}: expected {expected}, the download is {}",
                    download.digest
                )));
            }
        }
        Ok(download)
    }
}

/// Downloads `url` into a new file in `dir`, hashing it on the way.
pub(crate) fn fetch(url: &str, dir: &Path) -> Result<Download> {
    let response = ureq::get(url).call().map_err(|err| match err {
        ureq::Error::Status(code, _) => Error::Copy(format!(
            "cannot download {url}: the server answered HTTP {code}; check the URL"
        )),
        ureq::Error::Transport(transport) => Error::Copy(format!(
            "cannot download: {transport}; check the URL and that this machine can reach it (kiln downloads with the host's network)"
        )),
    })?;
    let mut reader = response.into_reader();
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::Copy(format!("ADD {url}: the download broke off: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io_err(file.path()))?;
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let (_, path) = file.keep().map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        error: e.error,
    })?;
    Ok(Download { path, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_from_urls() {
        assert_eq!(
            url_file_name("https://example.com/a/b.tar.gz?x=1").unwrap(),
            "b.tar.gz"
        );
        assert_eq!(url_file_name("http://h:8080/file#frag").unwrap(), "file");
        assert!(url_file_name("https://example.com/").is_err());
        assert!(url_file_name("https://example.com").is_err());
    }

    #[test]
    fn unreachable_hosts_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let downloads = Downloads::new(dir.path()).unwrap();
        // Port 1 on loopback: nothing listens there.
        let err = downloads
            .get("http://127.0.0.1:1/file", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot download") && err.contains("reach"),
            "{err}"
        );
    }

    #[test]
    fn downloads_are_verified_and_shared() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            // Serves exactly one request: the second get must not fetch again.
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).unwrap();
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                )
                .unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let downloads = Downloads::new(dir.path()).unwrap();
        let url = format!("http://127.0.0.1:{port}/greeting");
        let good = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let got = downloads.get(&url, Some(good)).unwrap();
        assert_eq!(std::fs::read(&got.path).unwrap(), b"hello");
        server.join().unwrap();
        let err = downloads
            .get(
                &url,
                Some("sha256:0000000000000000000000000000000000000000000000000000000000000000"),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
    }
}
