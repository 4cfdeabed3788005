//! A raw test client for the simulators: TLS to a loopback port trusting the simulator's CA,
//! and reading frames with a deadline. Nothing of marketbox, so the smoke tests check the
//! simulators on their own.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::FutureExt;
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use futures_util::StreamExt;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use smol::Async;

pub type Ws = WebSocketStream<TlsStream<Async<TcpStream>>>;

/// A client configuration trusting only the CA in `ca_pem`.
pub fn client_tls(ca_pem: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).expect("CA file") {
        roots.add(c.expect("CA PEM")).expect("CA cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// `wss://localhost:1234/public` → 1234.
pub fn port_of(url: &str) -> u16 {
    let hostport = url.split("://").nth(1).expect("scheme");
    let hostport = hostport.split('/').next().expect("host");
    hostport
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port number")
}

/// TCP + TLS to the loopback port of `url`, as `localhost`.
pub async fn tls_connect(ca_pem: &Path, url: &str) -> TlsStream<Async<TcpStream>> {
    let tcp = Async::<TcpStream>::connect(([127, 0, 0, 1], port_of(url)))
        .await
        .expect("connect");
    TlsConnector::from(client_tls(ca_pem))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake (the simulator's CA must be trusted)")
}

/// A WebSocket to `url` (its port reached over TLS).
pub async fn try_ws(ca_pem: &Path, url: &str) -> Result<Ws, WsError> {
    let tls = tls_connect(ca_pem, url).await;
    async_tungstenite::client_async(url, tls)
        .await
        .map(|(ws, _)| ws)
}

/// The next message of any kind, or `None` after `wait`.
pub async fn next_msg(ws: &mut Ws, wait: Duration) -> Option<Result<Message, WsError>> {
    async { ws.next().await }
        .or(async {
            smol::Timer::after(wait).await;
            None
        })
        .await
}
