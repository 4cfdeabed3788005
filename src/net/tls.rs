//! TLS client configuration: webpki roots plus `[tls] extra_ca`, always verified.
//!
//! There is deliberately no way to disable certificate verification (DESIGN, Security stance).

use std::path::Path;
use std::sync::Arc;

use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Which application protocol to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// WebSockets: none.
    None,
    /// REST: `http/1.1`.
    Http11,
}

/// TLS set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("extra CA file {path}: {reason}")]
    ExtraCa { path: String, reason: String },
    #[error("TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
}

/// A client configuration trusting the webpki roots and every certificate in `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>, alpn: Alpn) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let err = |reason: String| TlsError::ExtraCa {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(format!("cannot read it: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(err("holds no CERTIFICATE block".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn == Alpn::Http11 {
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(cfg))
}
