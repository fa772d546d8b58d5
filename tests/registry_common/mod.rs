//! The registry the registry tests run against: Debian's docker-registry
//! (the distribution registry v2) started per test on 127.0.0.1, optionally
//! with htpasswd auth; killed when the guard drops.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry process on 127.0.0.1, killed when dropped.
pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    htpasswd: Option<PathBuf>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Registry {
    /// A registry storing into `dir`, with htpasswd auth for `user`.
    pub fn start(dir: &Path, user: Option<(&str, &str)>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry (scripts/install-deps.sh)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let htpasswd = user.map(|(name, password)| {
            let path = dir.join("htpasswd");
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(&path, format!("{name}:{hash}\n")).unwrap();
            path
        });
        let mut registry = Registry {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            htpasswd,
        };
        registry.run();
        registry
    }

    pub fn run(&mut self) {
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n",
            self.dir.join("data").display(),
            self.port
        );
        if let Some(path) = &self.htpasswd {
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                path.display()
            ));
        }
        let config_path = self.dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("registry.log")).unwrap())
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not listen; its log:\n{}",
                std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn reference(&self, repository: &str) -> String {
        format!("{}/{repository}", self.host())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
