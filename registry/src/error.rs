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
    BadReference { reference: String, reason: String },
    /// The registry could not be reached or the connection broke.
    #[error("cannot reach registry {registry} ({url}): {message}")]
    Unreachable {
        registry: String,
        url: String,
        message: String,
    },
    /// The connection broke in the middle of a transfer.
    #[error("the connection to registry {registry} broke during {what}: {message}; run the command again: what already arrived whole is kept and skipped")]
    Interrupted {
        registry: String,
        what: String,
        message: String,
    },
    /// The registry refused the credentials, or wants some and has none.
    #[error("authentication to {registry} failed: {detail}; run `kiln login {registry}` with valid credentials")]
    AuthFailed { registry: String, detail: String },
    /// The credentials are valid but may not do this.
    #[error("registry {registry} denied access to {repository}: {detail}")]
    Denied {
        registry: String,
        repository: String,
        detail: String,
    },
    /// The repository, manifest or blob does not exist.
    #[error("{what} not found in {registry}: {detail}")]
    NotFound {
        registry: String,
        what: String,
        detail: String,
    },
    /// Any other error answer from the registry.
    #[error("registry {registry} answered {status} to {method} {url}: {detail}")]
    Registry {
        registry: String,
        method: String,
        url: String,
        status: u16,
        detail: String,
    },
    /// Content that does not hash to the digest it was announced under.
    #[error("{what} is corrupt: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// A registry answer kiln cannot use.
    #[error("{what} from {registry} is not valid: {message}")]
    Invalid {
        registry: String,
        what: String,
        message: String,
    },
    /// An index with no manifest for the wanted platform.
    #[error(
        "{reference} has no image for {wanted}; it has: {available}; pick one with --platform"
    )]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    /// A manifest or layer type kiln cannot store.
    #[error("{reference}: unsupported media type {media_type}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    /// The registry's TLS certificate does not verify.
    #[error("the TLS certificate of registry {registry} is not trusted ({detail}); trust its CA by putting the CA certificate in {ca_dir}/ca.crt (Docker's layout; kiln's --certs-dir changes the root), or pass --insecure to skip verification")]
    UntrustedCertificate {
        registry: String,
        detail: String,
        ca_dir: PathBuf,
    },
    /// A CA certificate file that cannot be used.
    #[error("{path}: {message}; it should hold PEM certificates (-----BEGIN CERTIFICATE-----)")]
    Certificate { path: PathBuf, message: String },
    /// The registry refused the connection for want of a (trusted) client
    /// certificate.
    #[error("registry {registry} refused the TLS connection ({alert}): it wants a client certificate it trusts; put the certificate in {dir}/client.cert and its key in {dir}/client.key (Docker's layout; kiln's --certs-dir changes the root)", dir = dir.display())]
    ClientCertificateRefused {
        registry: String,
        alert: String,
        dir: PathBuf,
    },
    /// A client certificate or key of certs.d that cannot be used.
    #[error("{path}: {message}")]
    ClientCertificate { path: PathBuf, message: String },
    /// The TLS library could not be set up.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// The docker credentials file could not be read or written.
    #[error("{path}: {message}")]
    Credentials { path: PathBuf, message: String },
    /// A Docker credential helper (`credsStore`, `credHelpers`) failed.
    #[error("credential helper {program} ({named_by}) could not {action}: {message}")]
    CredentialHelper {
        program: String,
        action: String,
        named_by: String,
        message: String,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] kiln_cache::Error),
    /// Reading a blob from the store for upload failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
