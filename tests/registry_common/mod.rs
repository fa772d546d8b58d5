//! The registry the registry tests run against: Debian's docker-registry
//! (the distribution registry v2) started per test on 127.0.0.1, optionally
//! with htpasswd auth; killed when the guard drops.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_testsupport::run::run_ok;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry process on 127.0.0.1, killed when dropped.
pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    htpasswd: Option<PathBuf>,
    /// Certificate and key files when it serves HTTPS.
    tls: Option<(PathBuf, PathBuf)>,
    /// The CA whose client certificates it requires, if any.
    client_ca: Option<PathBuf>,
}

/// A test certificate authority made with openssl, issuing P-256 keys.
pub struct TestCa {
    dir: PathBuf,
    pub certificate: PathBuf,
    key: PathBuf,
}

fn openssl(args: &[&str]) {
    run_ok(Command::new("openssl").args(args));
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let (key, certificate) = (dir.join("ca.key"), dir.join("ca.crt"));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", "/CN=kiln test CA"];
        args.extend(EC_KEY);
        args.extend(["-keyout", key.to_str().unwrap()]);
        args.extend(["-out", certificate.to_str().unwrap()]);
        openssl(&args);
        TestCa {
            dir: dir.to_owned(),
            certificate,
            key,
        }
    }

    /// A certificate and key named `name.crt` and `name.key` for `subject`,
    /// with the given X.509 extensions.
    pub fn issue(&self, name: &str, subject: &str, extensions: &str) -> (PathBuf, PathBuf) {
        let file = |extension: &str| self.dir.join(format!("{name}.{extension}"));
        let (key, csr, certificate, ext) = (file("key"), file("csr"), file("crt"), file("ext"));
        let mut request = vec!["req", "-subj", subject];
        request.extend(["-keyout", key.to_str().unwrap()]);
        request.extend(["-out", csr.to_str().unwrap()]);
        request.extend(EC_KEY);
        openssl(&request);
        std::fs::write(&ext, extensions).unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            self.certificate.to_str().unwrap(),
            "-CAkey",
            self.key.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            certificate.to_str().unwrap(),
        ]);
        (certificate, key)
    }
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
            tls: None,
            client_ca: None,
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
        if let Some((certificate, key)) = &self.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                certificate.display(),
                key.display()
            ));
            if let Some(ca) = &self.client_ca {
                config.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
        }
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

    /// A registry serving HTTPS with a certificate for 127.0.0.1 signed by
    /// a test CA made with openssl; returns it and the CA certificate file.
    pub fn start_tls(dir: &Path) -> (Registry, PathBuf) {
        let ca = TestCa::new(dir);
        let registry = Registry::serve_tls(dir, &ca, None);
        (registry, ca.certificate)
    }

    /// Like [`Registry::start_tls`], but the registry also requires a
    /// client certificate signed by the returned CA (which `issue`s one).
    pub fn start_mutual_tls(dir: &Path) -> (Registry, TestCa) {
        let ca = TestCa::new(dir);
        let registry = Registry::serve_tls(dir, &ca, Some(ca.certificate.clone()));
        (registry, ca)
    }

    fn serve_tls(dir: &Path, ca: &TestCa, client_ca: Option<PathBuf>) -> Registry {
        let (certificate, key) = ca.issue(
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        );
        let mut registry = Registry {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            htpasswd: None,
            tls: Some((certificate, key)),
            client_ca,
        };
        registry.run();
        registry
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

/// Pushes a multi-platform index of images in the store at `store_root`
/// (`(id, architecture)`, all linux) to `target` with `skopeo copy --all`,
/// through an OCI layout made in `layout`.
pub fn push_index(store_root: &Path, layout: &Path, images: &[(&str, &str)], target: &str) {
    std::fs::create_dir_all(layout).unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(store_root.join("blobs"))
        .arg(layout)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let size = |id: &str| {
        std::fs::metadata(layout.join("blobs/sha256").join(&id[7..]))
            .unwrap()
            .len()
    };
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(id, architecture)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": id, "size": size(id),
                "platform": {"os": "linux", "architecture": architecture}
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let index_path = layout.join("index-blob.json");
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let out = Command::new("sha256sum").arg(&index_path).output().unwrap();
    let index_digest = String::from_utf8(out.stdout).unwrap()[..64].to_owned();
    let index_size = std::fs::metadata(&index_path).unwrap().len();
    std::fs::rename(&index_path, layout.join("blobs/sha256").join(&index_digest)).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{index_digest}"), "size": index_size,
            "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:multi", layout.display()))
            .arg(format!("docker://{target}")),
    );
}

/// The raw manifest skopeo reads at `reference` (a loopback registry).
pub fn skopeo_inspect(reference: &str) -> serde_json::Value {
    let out = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{reference}")),
    );
    serde_json::from_slice(&out.stdout).expect("skopeo prints JSON")
}
