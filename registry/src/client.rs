//! The HTTP side of the distribution spec: one registry, its authentication
//! (anonymous, basic, bearer tokens learnt from `WWW-Authenticate`), and the
//! blob and manifest endpoints.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::tls;

use crate::auth::{parse_challenge, Credentials};
use crate::error::{Error, Result};
use crate::reference::is_loopback;

/// Every manifest type kiln reads, for `Accept`.
pub(crate) const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A registry's answer to a manifest PUT.
#[derive(Debug, Clone)]
pub(crate) struct PutAnswer {
    pub digest: Option<String>,
    pub subject: Option<String>,
}

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Skip TLS certificate verification, and allow plain HTTP when the
    /// registry does not speak TLS (loopback registries may always fall back
    /// to plain HTTP, but their certificates are verified).
    pub insecure: bool,
    /// Credentials for basic auth or for the token server; `None` is anonymous.
    pub credentials: Option<Credentials>,
    /// Per-registry CA certificates, `DIR/HOST[:PORT]/*.crt`; `None` is
    /// Docker's [`tls::DOCKER_CERTS_DIR`].
    pub certs_dir: Option<PathBuf>,
}

#[derive(Debug)]
enum AuthState {
    /// No request has been challenged yet.
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        /// Tokens by the scopes they were issued for.
        tokens: HashMap<String, String>,
    },
}

/// A connection to one registry.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    registry: String,
    api_host: String,
    /// `https://host` or `http://host`, decided by the first request.
    base: Mutex<Option<String>>,
    /// Whether plain HTTP may follow a failed HTTPS attempt.
    http_fallback: bool,
    certs_dir: PathBuf,
    credentials: Option<Credentials>,
    auth: Mutex<AuthState>,
}

/// What a request sends.
pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8], &'a str),
    /// `len` bytes of a file from `offset`, reopened for each attempt.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
    },
}

/// The outcome of asking a registry to mount a blob from another repository.
pub(crate) enum Mount {
    Mounted,
    /// The registry could not mount and opened an upload session instead.
    Started(String),
}

impl Client {
    /// A client for `registry` (`host[:port]`; Docker Hub's API host for
    /// docker.io). HTTPS first, as Docker does; plain HTTP only when that
    /// fails and the host is loopback or `insecure` is set.
    pub fn new(api_host: &str, registry: &str, options: ClientOptions) -> Result<Client> {
        let certs_dir = options
            .certs_dir
            .unwrap_or_else(|| PathBuf::from(tls::DOCKER_CERTS_DIR));
        let tls_config = if options.insecure {
            tls::unverified()?
        } else {
            tls::verifying(&certs_dir, api_host)?
        };
        let agent = ureq::AgentBuilder::new()
            .tls_config(tls_config)
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(300))
            .timeout_write(Duration::from_secs(300))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent,
            registry: registry.to_owned(),
            api_host: api_host.to_owned(),
            base: Mutex::new(None),
            http_fallback: is_loopback(api_host) || options.insecure,
            certs_dir,
            credentials: options.credentials,
            auth: Mutex::new(AuthState::Unknown),
        })
    }

    /// `https://host`, or `http://host` when the registry does not speak TLS
    /// and plain HTTP is allowed. Decided once, by asking for `/v2/` (any
    /// HTTP answer, even 401, settles it).
    fn base(&self) -> Result<String> {
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(base) = &*base {
            return Ok(base.clone());
        }
        let https = format!("https://{}", self.api_host);
        // Docker's ping: a 401 here also teaches the authentication scheme.
        let probe = |root: &str| {
            let request = self
                .agent
                .get(&format!("{root}/v2/"))
                .timeout(Duration::from_secs(30));
            match request.call() {
                Ok(_) => Ok(()),
                Err(ureq::Error::Status(401, response)) => {
                    self.learn_challenge(&response, &[]);
                    Ok(())
                }
                Err(ureq::Error::Status(..)) => Ok(()),
                Err(ureq::Error::Transport(transport)) => Err(Box::new(transport)),
            }
        };
        let chosen = match probe(&https) {
            Ok(()) => https,
            Err(transport) => {
                if let Some(detail) = tls::certificate_problem(&*transport) {
                    return Err(Error::UntrustedCertificate {
                        registry: self.registry.clone(),
                        detail,
                        ca_dir: tls::registry_certs(&self.certs_dir, &self.api_host),
                    });
                }
                if let Some(alert) = tls::client_certificate_refusal(&*transport) {
                    return Err(Error::ClientCertificateRefused {
                        registry: self.registry.clone(),
                        alert,
                        dir: tls::registry_certs(&self.certs_dir, &self.api_host),
                    });
                }
                let unreachable = |message: String| {
                    Error::unreachable(&self.registry, format!("{https}/v2/"), message)
                };
                if !self.http_fallback {
                    return Err(unreachable(transport.to_string()));
                }
                let http = format!("http://{}", self.api_host);
                match probe(&http) {
                    Ok(()) => http,
                    Err(plain) => {
                        return Err(unreachable(format!(
                            "{transport}; and over plain HTTP: {plain}"
                        )))
                    }
                }
            }
        };
        *base = Some(chosen.clone());
        Ok(chosen)
    }

    /// The registry's name as the user wrote it.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Checks that the registry speaks the v2 API and that the credentials
    /// (if any) are accepted.
    pub fn ping(&self) -> Result<()> {
        let url = format!("{}/v2/", self.base()?);
        self.send("GET", &url, &[], &[], Body::Empty, "the registry API")
            .map(drop)
    }

    fn url(&self, location: &str) -> Result<String> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Ok(location.to_owned())
        } else {
            Ok(format!("{}{}", self.base()?, location))
        }
    }

    fn authorization(&self, scopes: &[String]) -> Result<Option<String>> {
        let key = scopes.join(" ");
        let (realm, service) = {
            let state = self.auth.lock().unwrap_or_else(|e| e.into_inner());
            match &*state {
                AuthState::Unknown => return Ok(None),
                AuthState::Basic => {
                    return Ok(self.credentials.as_ref().map(Credentials::basic_header))
                }
                AuthState::Bearer {
                    realm,
                    service,
                    tokens,
                } => {
                    if let Some(token) = tokens.get(&key) {
                        return Ok(Some(format!("Bearer {token}")));
                    }
                    (realm.clone(), service.clone())
                }
            }
        };
        let token = self.fetch_token(&realm, service.as_deref(), scopes)?;
        let mut state = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        if let AuthState::Bearer { tokens, .. } = &mut *state {
            tokens.insert(key, token.clone());
        }
        Ok(Some(format!("Bearer {token}")))
    }

    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<String> {
        let mut request = self.agent.get(realm);
        if let Some(service) = service {
            request = request.query("service", service);
        }
        for scope in scopes {
            request = request.query("scope", scope);
        }
        if let Some(credentials) = &self.credentials {
            request = request.set("Authorization", &credentials.basic_header());
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(401 | 403, response)) => {
                return Err(Error::AuthFailed {
                    registry: self.registry.clone(),
                    detail: format!(
                        "the token server {realm} refused {}: {}",
                        if self.credentials.is_some() {
                            "the credentials"
                        } else {
                            "anonymous access"
                        },
                        error_detail(response)
                    ),
                })
            }
            Err(ureq::Error::Status(status, response)) => {
                return Err(Error::Registry {
                    registry: self.registry.clone(),
                    method: "GET".into(),
                    url: realm.to_owned(),
                    status,
                    detail: error_detail(response),
                })
            }
            Err(ureq::Error::Transport(transport)) => {
                return Err(Error::unreachable(&self.registry, realm, transport))
            }
        };
        let invalid = |message: String| {
            Error::invalid(&self.registry, format!("the token from {realm}"), message)
        };
        let text = response.into_string().map_err(|e| invalid(e.to_string()))?;
        let body: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| invalid("it has neither \"token\" nor \"access_token\"".into()))
    }

    /// Learns the authentication scheme from a 401 answer (another thread may
    /// have learnt it already, or a token may have expired). Returns whether
    /// a retry may succeed.
    fn learn_challenge(&self, response: &ureq::Response, scopes: &[String]) -> bool {
        let Some(challenge) = response
            .header("WWW-Authenticate")
            .and_then(parse_challenge)
        else {
            return false;
        };
        let mut state = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        match challenge.scheme.as_str() {
            "basic" if self.credentials.is_some() => {
                *state = AuthState::Basic;
                true
            }
            "bearer" => {
                let Some(realm) = challenge.params.get("realm") else {
                    return false;
                };
                match &mut *state {
                    AuthState::Bearer {
                        realm: known,
                        tokens,
                        ..
                    } if known == realm => {
                        tokens.remove(&scopes.join(" "));
                    }
                    _ => {
                        *state = AuthState::Bearer {
                            realm: realm.clone(),
                            service: challenge.params.get("service").cloned(),
                            tokens: HashMap::new(),
                        }
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Sends a request, authenticating on a 401 challenge and retrying once.
    /// Errors name `what` the request was about.
    pub(crate) fn send(
        &self,
        method: &str,
        url: &str,
        scopes: &[String],
        headers: &[(&str, &str)],
        body: Body<'_>,
        what: &str,
    ) -> Result<ureq::Response> {
        let mut retried = false;
        loop {
            let mut request = self.agent.request(method, url);
            for (name, value) in headers {
                request = request.set(name, value);
            }
            if let Some(authorization) = self.authorization(scopes)? {
                request = request.set("Authorization", &authorization);
            }
            let result = match &body {
                Body::Empty => match method {
                    "PUT" | "POST" | "PATCH" => request.set("Content-Length", "0").send_bytes(&[]),
                    _ => request.call(),
                },
                Body::Bytes(bytes, content_type) => {
                    request.set("Content-Type", content_type).send_bytes(bytes)
                }
                Body::File { path, offset, len } => {
                    let mut file = std::fs::File::open(path).map_err(|source| Error::Io {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    file.seek(SeekFrom::Start(*offset))
                        .map_err(|source| Error::Io {
                            path: path.to_path_buf(),
                            source,
                        })?;
                    // Large reads: io::copy then hands the socket a
                    // megabyte at a time instead of 8 KiB.
                    let body = std::io::BufReader::with_capacity(1 << 20, file.take(*len));
                    request
                        .set("Content-Type", "application/octet-stream")
                        .set("Content-Length", &len.to_string())
                        .send(body)
                }
            };
            match result {
                Ok(response) => return Ok(response),
                Err(ureq::Error::Status(401, response)) => {
                    if !retried && self.learn_challenge(&response, scopes) {
                        retried = true;
                        continue;
                    }
                    let detail = match (&self.credentials, error_detail(response)) {
                        (None, detail) => format!("{detail} (no credentials were given)"),
                        (Some(c), detail) => format!("{detail} (as user {:?})", c.username),
                    };
                    return Err(Error::AuthFailed {
                        registry: self.registry.clone(),
                        detail,
                    });
                }
                Err(ureq::Error::Status(status, response)) => {
                    return Err(self.status_error(method, url, status, response, what))
                }
                Err(ureq::Error::Transport(transport)) => {
                    // Connected, then lost while sending a body: say so,
                    // rather than that the registry cannot be reached.
                    let sending = !matches!(body, Body::Empty);
                    if sending && transport.kind() == ureq::ErrorKind::Io {
                        return Err(Error::Interrupted {
                            registry: self.registry.clone(),
                            what: format!("the {what}"),
                            message: transport.to_string(),
                        });
                    }
                    return Err(Error::unreachable(&self.registry, url, transport));
                }
            }
        }
    }

    fn status_error(
        &self,
        method: &str,
        url: &str,
        status: u16,
        response: ureq::Response,
        what: &str,
    ) -> Error {
        let detail = error_detail(response);
        match status {
            403 => Error::Denied {
                registry: self.registry.clone(),
                repository: what.to_owned(),
                detail,
            },
            404 => Error::NotFound {
                registry: self.registry.clone(),
                what: what.to_owned(),
                detail,
            },
            _ => Error::Registry {
                registry: self.registry.clone(),
                method: method.to_owned(),
                url: url.to_owned(),
                status,
                detail,
            },
        }
    }

    /// Whether the repository has a blob.
    pub(crate) fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base()?);
        match self.send(
            "HEAD",
            &url,
            &pull_scope(repository),
            &[],
            Body::Empty,
            &format!("blob {digest}"),
        ) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Asks to mount a blob from another repository of the same registry.
    pub(crate) fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<Mount> {
        let url = format!(
            "{}/v2/{repository}/blobs/uploads/?mount={digest}&from={from}",
            self.base()?
        );
        let mut scopes = push_scope(repository);
        scopes.extend(pull_scope(from));
        let response = self.send(
            "POST",
            &url,
            &scopes,
            &[],
            Body::Empty,
            &format!("repository {repository}"),
        )?;
        if response.status() == 201 {
            return Ok(Mount::Mounted);
        }
        Ok(Mount::Started(self.location(response, &url)?))
    }

    /// Opens an upload session and returns its URL.
    pub(crate) fn start_upload(&self, repository: &str) -> Result<String> {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base()?);
        let response = self.send(
            "POST",
            &url,
            &push_scope(repository),
            &[],
            Body::Empty,
            &format!("repository {repository}"),
        )?;
        self.location(response, &url)
    }

    fn location(&self, response: ureq::Response, url: &str) -> Result<String> {
        let location = response.header("Location").ok_or_else(|| {
            Error::invalid(
                &self.registry,
                format!("the answer to {url}"),
                "it has no Location header",
            )
        })?;
        self.url(location)
    }

    /// Uploads `size` bytes of `path` as blob `digest` into an open session:
    /// in one PUT up to `chunk_size`, else PATCH by PATCH and a closing PUT.
    pub(crate) fn upload_blob(
        &self,
        repository: &str,
        mut location: String,
        digest: &str,
        path: &Path,
        size: u64,
        chunk_size: u64,
    ) -> Result<()> {
        let scopes = push_scope(repository);
        let what = format!("upload of blob {digest} to {repository}");
        let with_digest = |location: &str| {
            let separator = if location.contains('?') { '&' } else { '?' };
            format!("{location}{separator}digest={digest}")
        };
        if size <= chunk_size {
            let url = with_digest(&location);
            self.send(
                "PUT",
                &url,
                &scopes,
                &[],
                Body::File {
                    path,
                    offset: 0,
                    len: size,
                },
                &what,
            )?;
            return Ok(());
        }
        let chunk_size = chunk_size.max(1);
        let mut offset = 0;
        while offset < size {
            let len = chunk_size.min(size - offset);
            let range = format!("{}-{}", offset, offset + len - 1);
            let response = self.send(
                "PATCH",
                &location,
                &scopes,
                &[("Content-Range", &range)],
                Body::File { path, offset, len },
                &what,
            )?;
            let url = location.clone();
            location = self.location(response, &url)?;
            offset += len;
        }
        let url = with_digest(&location);
        self.send("PUT", &url, &scopes, &[], Body::Empty, &what)?;
        Ok(())
    }

    /// Puts a manifest under a tag or digest; returns the digest the
    /// registry computed, when it says.
    pub(crate) fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Option<String>> {
        Ok(self
            .put_manifest_answer(repository, reference, media_type, bytes)?
            .digest)
    }

    /// Puts a manifest and returns what the registry answered: the digest
    /// it computed and, for a manifest with a `subject`, the `OCI-Subject`
    /// header a registry with the referrers API sends.
    pub(crate) fn put_manifest_answer(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<PutAnswer> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base()?);
        let response = self.send(
            "PUT",
            &url,
            &push_scope(repository),
            &[],
            Body::Bytes(bytes, media_type),
            &format!("repository {repository}"),
        )?;
        Ok(PutAnswer {
            digest: response.header("Docker-Content-Digest").map(str::to_owned),
            subject: response.header("OCI-Subject").map(str::to_owned),
        })
    }

    /// The referrers API (`GET /v2/<name>/referrers/<digest>`): the image
    /// index of the manifests whose subject is `digest`, or `None` when the
    /// registry has no such API (it answers 404).
    pub(crate) fn get_referrers(&self, repository: &str, digest: &str) -> Result<Option<Vec<u8>>> {
        let url = format!("{}/v2/{repository}/referrers/{digest}", self.base()?);
        let response = match self.send(
            "GET",
            &url,
            &pull_scope(repository),
            &[("Accept", "application/vnd.oci.image.index.v1+json")],
            Body::Empty,
            &format!("the referrers of {repository}@{digest}"),
        ) {
            Ok(response) => response,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let is_index = response
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/vnd.oci.image.index.v1+json"));
        let bytes = self.read_manifest_body(response, &url)?;
        // Something that answers 200 with another document (an HTML page
        // of a proxy, say) is no referrers API either.
        Ok(is_index.then_some(bytes))
    }

    /// The body of a manifest or index answer from `url`. Manifests are
    /// small; something past 4 MiB is not one and is cut off there.
    fn read_manifest_body(&self, response: ureq::Response, url: &str) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(4 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::unreachable(&self.registry, url, e))?;
        Ok(bytes)
    }

    /// Fetches a manifest or index: its bytes, its media type, and the digest
    /// the registry announced.
    pub(crate) fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>, Option<String>)> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base()?);
        let accept = MANIFEST_TYPES.join(", ");
        let response = self.send(
            "GET",
            &url,
            &pull_scope(repository),
            &[("Accept", &accept)],
            Body::Empty,
            &format!("manifest {repository}:{reference} (or its repository)"),
        )?;
        let media_type = response
            .header("Content-Type")
            .map(|t| t.split(';').next().unwrap_or(t).trim().to_owned());
        let digest = response.header("Docker-Content-Digest").map(str::to_owned);
        let bytes = self.read_manifest_body(response, &url)?;
        Ok((bytes, media_type, digest))
    }

    /// Streams a blob.
    pub(crate) fn get_blob(&self, repository: &str, digest: &str) -> Result<impl Read + Send> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base()?);
        let response = self.send(
            "GET",
            &url,
            &pull_scope(repository),
            &[],
            Body::Empty,
            &format!("blob {digest} of {repository}"),
        )?;
        Ok(response.into_reader())
    }
}

fn pull_scope(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull")]
}

fn push_scope(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull,push")]
}

/// The registry's explanation of an error answer: the `errors` of the
/// distribution spec's error body, else its first line.
fn error_detail(response: ureq::Response) -> String {
    let status_text = response.status_text().to_owned();
    let mut text = String::new();
    let _ = response
        .into_reader()
        .take(64 << 10)
        .read_to_string(&mut text);
    if let Ok(body) = serde_json::from_str::<serde_json::Value>(&text) {
        if let Some(errors) = body.get("errors").and_then(|e| e.as_array()) {
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("ERROR");
                    let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    format!("{code}: {message}")
                })
                .collect();
            if !parts.is_empty() {
                return parts.join("; ");
            }
        }
    }
    match text.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
        Some(line) => line.chars().take(200).collect(),
        None => status_text.to_lowercase(),
    }
}

/// Where the store keeps which repositories a blob was pulled from or pushed
/// to, so a push can mount instead of upload.
pub(crate) fn sources_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("blob-sources")
}
