//! The registry client's error type: what failed, against which registry
//! or blob, and what to do about it.

use std::path::PathBuf;

/// What can go wrong talking to a registry. Messages are lowercase and say
/// what to do where the user can do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference that is not `[REGISTRY/]REPO[:TAG][@DIGEST]`.
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry could not be reached or the connection broke.
    #[error("cannot reach registry {registry} ({url}): {message}")]
    Unreachable {
        /// The registry (`HOST[:PORT]`).
        registry: String,
        /// The URL kiln tried.
        url: String,
        /// Why the connection failed.
        message: String,
    },
    /// The connection broke in the middle of a transfer.
    #[error("the connection to registry {registry} broke during {what}: {message}; run the command again: what already arrived whole is kept and skipped")]
    Interrupted {
        /// The registry (`HOST[:PORT]`).
        registry: String,
        /// The transfer (`the download of blob DIGEST of REPO`, ...).
        what: String,
        /// Why the connection broke.
        message: String,
    },
    /// The registry refused the credentials, or wants some and has none.
    #[error("authentication to {registry} failed: {detail}; run `kiln login {registry}` with valid credentials")]
    AuthFailed {
        /// The registry (`HOST[:PORT]`).
        registry: String,
        /// What the registry or its token server answered.
        detail: String,
    },
    /// The credentials are valid but may not do this.
    #[error("registry {registry} denied access to {repository}: {detail}")]
    Denied {
        /// The registry (`HOST[:PORT]`).
        registry: String,
        /// The repository (or what in it) access was denied to.
        repository: String,
        /// The registry's error message.
        detail: String,
    },
    /// The repository, manifest or blob does not exist.
    #[error("{what} not found in {registry}: {detail}")]
    NotFound {
        /// The registry (`HOST[:PORT]`).
        registry: String,
        /// What was asked for.
        what: String,
        /// The registry's error message.
        detail: String,
    },
    /// Any other error answer from the registry.
    #[error("registry {registry} answered {status} to {method} {url}: {detail}")]
    Registry {
        /// The registry (`HOST[:PORT]`).
        registry: String,
        /// The HTTP method of the request.
        method: String,
        /// The URL of the request.
        url: String,
        /// The HTTP status of the answer.
        status: u16,
        /// The registry's error message.
        detail: String,
    },
    /// Content that does not hash to the digest it was announced under.
    #[error("{what} is corrupt: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The content (`blob DIGEST from HOST/REPO`, ...).
        what: String,
        /// The digest it was announced under.
        expected: String,
        /// The digest it hashes to.
        actual: String,
    },
    /// A registry answer kiln cannot use.
    #[error("{what} from {registry} is not valid: {message}")]
    Invalid {
        /// The registry (`HOST[:PORT]`).
        registry: String,
        /// The answer (`the manifest of REF`, `the token from URL`, ...).
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// An index with no manifest for the wanted platform.
    #[error(
        "{reference} has no image for {wanted}; it has: {available}; pick one with --platform"
    )]
    NoMatchingPlatform {
        /// The index as the user named it.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index has, comma-separated (`nothing` when none).
        available: String,
    },
    /// A manifest or layer type kiln cannot store.
    #[error("{reference}: unsupported media type {media_type}")]
    UnsupportedMediaType {
        /// The image as the user named it.
        reference: String,
        /// The media type.
        media_type: String,
    },
    /// The registry's TLS certificate does not verify.
    #[error("the TLS certificate of registry {registry} is not trusted ({detail}); trust its CA by putting the CA certificate in {ca_dir}/ca.crt (Docker's layout; kiln's --certs-dir changes the root), or pass --insecure to skip verification")]
    UntrustedCertificate {
        /// The registry (`HOST[:PORT]`).
        registry: String,
        /// Why the certificate does not verify.
        detail: String,
        /// The registry's certs.d directory, where its CA would go.
        ca_dir: PathBuf,
    },
    /// A CA certificate file that cannot be used.
    #[error("{path}: {message}; it should hold PEM certificates (-----BEGIN CERTIFICATE-----)")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The registry refused the connection for want of a (trusted) client
    /// certificate.
    #[error("registry {registry} refused the TLS connection ({alert}): it wants a client certificate it trusts; put the certificate in {dir}/client.cert and its key in {dir}/client.key (Docker's layout; kiln's --certs-dir changes the root)", dir = dir.display())]
    ClientCertificateRefused {
        /// The registry (`HOST[:PORT]`).
        registry: String,
        /// The TLS alert the registry sent.
        alert: String,
        /// The registry's certs.d directory, where the client certificate would go.
        dir: PathBuf,
    },
    /// A client certificate or key of certs.d that cannot be used.
    #[error("{path}: {message}")]
    ClientCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The TLS library could not be set up.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// The docker credentials file could not be read or written.
    #[error("{path}: {message}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A Docker credential helper (`credsStore`, `credHelpers`) failed.
    #[error("credential helper {program} ({named_by}) could not {action}: {message}")]
    CredentialHelper {
        /// The helper program (`docker-credential-NAME`).
        program: String,
        /// What kiln asked of it (`get`, `store`, `erase`).
        action: String,
        /// Where the helper is named (`credsStore in FILE`, ...).
        named_by: String,
        /// Why it failed.
        message: String,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] kiln_cache::Error),
    /// Reading a blob from the store for upload failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// `registry` could not be reached at `url` (or the connection broke
    /// before an answer), and why.
    pub fn unreachable(
        registry: impl Into<String>,
        url: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Error {
        Error::Unreachable {
            registry: registry.into(),
            url: url.into(),
            message: message.to_string(),
        }
    }

    /// An answer of `registry` kiln cannot use: `what` it was (`the manifest
    /// of REF`, `blob DIGEST`, ...) and what is wrong with it.
    pub fn invalid(
        registry: impl Into<String>,
        what: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Error {
        Error::Invalid {
            registry: registry.into(),
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
