//! TLS settings for a registry, the way Docker decides them: the Mozilla root
//! certificates plus the CA certificates Docker keeps per registry
//! (`/etc/docker/certs.d/HOST[:PORT]/*.crt`) and the client certificate it
//! presents there (`NAME.cert` with its key `NAME.key`), or, for an insecure
//! registry, no certificate verification at all (the connection is still
//! encrypted, and, as with Docker, no client certificate is sent).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// Where Docker keeps per-registry CA certificates.
pub const DOCKER_CERTS_DIR: &str = "/etc/docker/certs.d";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))
}

/// The directory of `api_host`'s own CA certificates under `certs_dir`.
pub(crate) fn registry_certs(certs_dir: &Path, api_host: &str) -> PathBuf {
    certs_dir.join(api_host)
}

/// A configuration that trusts the public roots and every `*.crt` in the
/// registry's directory under `certs_dir`, and presents the client
/// certificate found there.
pub(crate) fn verifying(certs_dir: &Path, api_host: &str) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let dir = registry_certs(certs_dir, api_host);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    let with_extension = |extension: &'static str| {
        paths
            .iter()
            .filter(move |p| p.extension().is_some_and(|e| e == extension))
    };
    for path in with_extension("crt") {
        let bad = |message: String| Error::Certificate {
            path: path.to_path_buf(),
            message,
        };
        let mut found = false;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            found = true;
        }
        if !found {
            return Err(bad("it holds no PEM certificate".into()));
        }
    }
    let builder = builder()?.with_root_certificates(roots);
    let config = match client_certificate(with_extension("cert"), with_extension("key"))? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The client certificate of a registry's certs.d directory: Docker pairs
/// each `NAME.cert` (PEM certificate chain) with `NAME.key` (its PEM private
/// key), and a certificate or key without its partner is an error. When
/// there are several pairs the first by name is used.
fn client_certificate<'a>(
    certs: impl Iterator<Item = &'a PathBuf>,
    keys: impl Iterator<Item = &'a PathBuf>,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let bad = |path: &Path, message: String| Error::ClientCertificate {
        path: path.to_path_buf(),
        message,
    };
    // Docker's rule: every certificate has its key beside it, and the reverse.
    let partner = |path: &Path, extension: &str, what: &str, needs: &str| {
        let partner = path.with_extension(extension);
        if partner.exists() {
            Ok(partner)
        } else {
            Err(bad(
                path,
                format!(
                    "a client {what} needs its {needs} beside it as {} (CA certificates use the extension .crt)",
                    partner.display()
                ),
            ))
        }
    };
    for key in keys {
        partner(key, "cert", "key", "certificate")?;
    }
    let mut first = None;
    for cert in certs {
        let key = partner(cert, "key", "certificate", "private key")?;
        if first.is_none() {
            first = Some((cert.clone(), key));
        }
    }
    let Some((cert, key)) = first else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            bad(
                &cert,
                format!("{e}; it should hold the PEM client certificate"),
            )
        })?;
    if chain.is_empty() {
        return Err(bad(&cert, "it holds no PEM certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
        bad(
            &key,
            format!(
                "{e}; it should hold the PEM private key of {}",
                cert.display()
            ),
        )
    })?;
    Ok(Some((chain, key_der)))
}

/// A configuration that accepts any certificate, for `--insecure`.
pub(crate) fn unverified() -> Result<Arc<ClientConfig>> {
    Ok(Arc::new(
        builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth(),
    ))
}

/// Skips the certificate check but still checks the handshake's signatures,
/// so the connection is encrypted with the key the server showed.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS error somewhere in an error's chain, if any.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error hides a custom error from source(); look inside.
        if let Some(tls) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = error.source();
    }
    None
}

/// What is wrong with the server's certificate, when that is why a
/// connection failed (as opposed to the server not speaking TLS at all).
pub(crate) fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    match tls_error(error)? {
        rustls::Error::InvalidCertificate(problem) => Some(format!("{problem:?}")),
        _ => None,
    }
}

/// The alert with which the server refused our (missing or untrusted)
/// client certificate, when that is why a connection failed.
pub(crate) fn client_certificate_refusal(
    error: &(dyn std::error::Error + 'static),
) -> Option<String> {
    use rustls::AlertDescription as Alert;
    match tls_error(error)? {
        rustls::Error::AlertReceived(
            alert @ (Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::AccessDenied),
        ) => Some(format!("{alert:?}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        assert_eq!(certificate_problem(&io).as_deref(), Some("UnknownIssuer"));
        let other = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(certificate_problem(&other), None);
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        assert_eq!(
            client_certificate_refusal(&refused).as_deref(),
            Some("CertificateRequired")
        );
        assert_eq!(certificate_problem(&refused), None);
        assert_eq!(client_certificate_refusal(&io), None);
    }

    #[test]
    fn a_certs_dir_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let host_dir = dir.path().join("registry.test:5000");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(host_dir.join("ca.crt"), "not a certificate\n").unwrap();
        let err = verifying(dir.path(), "registry.test:5000").unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        // Other registries are unaffected.
        assert!(verifying(dir.path(), "other.test").is_ok());
    }

    #[test]
    fn a_client_certificate_or_key_without_its_partner_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let host_dir = dir.path().join("registry.test");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(host_dir.join("client.key"), "key\n").unwrap();
        let err = verifying(dir.path(), "registry.test")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("client.key") && err.contains("client.cert") && err.contains(".crt"),
            "{err}"
        );
        std::fs::remove_file(host_dir.join("client.key")).unwrap();
        std::fs::write(host_dir.join("client.cert"), "cert\n").unwrap();
        let err = verifying(dir.path(), "registry.test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs its private key"), "{err}");
        // Both present, but not PEM: the certificate file is named.
        std::fs::write(host_dir.join("client.key"), "key\n").unwrap();
        let err = verifying(dir.path(), "registry.test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client.cert") && err.contains("PEM"), "{err}");
    }
}
