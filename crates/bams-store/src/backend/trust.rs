//! Which server certificates a client of a BAMS server accepts: the system's CAs, a private
//! CA, or exactly one certificate by its SHA-256 fingerprint. Pinning is how an agent trusts
//! a new appliance's self-signed certificate without copying files around: the package
//! prints the fingerprint, the operator passes it to `bams agent enroll --fingerprint`.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// What a client trusts.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// The system's certificate authorities.
    #[default]
    System,
    /// These PEM certificates as authorities, besides the system's.
    Ca(Vec<u8>),
    /// Exactly the certificate with this SHA-256 fingerprint (of its DER encoding).
    Fingerprint([u8; 32]),
}

impl Trust {
    /// What a client configured with an optional pinned `fingerprint` and an optional CA file
    /// trusts: the fingerprint first, else the CA, else the system's authorities.
    pub fn from_settings(ca_file: Option<&std::path::Path>, fingerprint: Option<&str>) -> Result<Self> {
        Ok(match (fingerprint, ca_file) {
            (Some(fp), _) => Self::Fingerprint(parse_fingerprint(fp)?),
            (None, Some(ca)) => Self::Ca(
                std::fs::read(ca).map_err(|e| Error::invalid(format!("reading the CA {}: {e}", ca.display())))?,
            ),
            (None, None) => Self::System,
        })
    }
}

/// Parse a fingerprint as `openssl x509 -fingerprint -sha256` and `bams tls fingerprint`
/// print it (`AB:CD:…`), or as plain hex; case does not matter.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32]> {
    let text = text.trim();
    let text = text.split_once('=').map_or(text, |(_, v)| v);
    let hex_digits: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex_digits)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Error::invalid(format!("{text:?} is not a SHA-256 fingerprint (64 hex digits, ':' allowed)")))?;
    Ok(bytes)
}

/// Show a fingerprint the way `openssl x509 -fingerprint -sha256` does.
pub fn format_fingerprint(sha256: &[u8; 32]) -> String {
    sha256.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint_of(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// An HTTP client builder that trusts what `trust` says.
pub fn client_builder(trust: &Trust) -> Result<reqwest::ClientBuilder> {
    let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(15));
    Ok(match trust {
        Trust::System => builder,
        Trust::Ca(pem) => {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|e| Error::invalid(format!("CA certificate: {e}")))?;
            builder.add_root_certificate(cert)
        }
        Trust::Fingerprint(sha256) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::new(ErrorKind::Other, format!("TLS: {e}")))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { sha256: *sha256, provider }))
                .with_no_client_auth();
            builder.use_preconfigured_tls(config)
        }
    })
}

/// Accepts exactly one server certificate; the handshake signatures are still checked, so
/// only the holder of that certificate's key passes.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint_of(end_entity.as_ref());
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {}, not the pinned {}",
                format_fingerprint(&got),
                format_fingerprint(&self.sha256)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_openssl_and_plain_form() {
        let fp = [0xabu8; 32];
        let shown = format_fingerprint(&fp);
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert_eq!(parse_fingerprint(&shown).unwrap(), fp);
        assert_eq!(parse_fingerprint(&format!("sha256 Fingerprint={shown}")).unwrap(), fp);
        assert_eq!(parse_fingerprint(&hex::encode(fp)).unwrap(), fp);
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }
}
