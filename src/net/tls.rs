//! TLS client configuration and the TCP(+TLS) connector shared by `ws` and `http`.
//!
//! Design: trust is the webpki roots plus every certificate of `[tls] extra_ca`, and there is
//! deliberately no way to disable certificate verification (DESIGN, Security stance): no
//! `dangerous()` configuration is built anywhere in this crate. The crypto provider is ring,
//! named explicitly so that a second provider pulled in by a dependency cannot change it.
//!
//! WebSockets and REST need different ALPN offers (none for WebSockets, since a server that
//! picked `h2` could not upgrade; `http/1.1` for REST), so callers build one config of each
//! kind with [`client_config`] and keep them for the life of the process.
//!
//! `connect_transport` resolves, connects and (for `wss`/`https`) runs the TLS handshake. It
//! is private to `net` and asks for the budget permit the connection will hold, so a socket
//! cannot be opened outside the budget. It has no timeout of its own: `ws::connect` and
//! `http::RestClient` bound it together with the rest of their handshakes.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use smol::Async;

use crate::budget::Permit;

/// Which application protocol to offer in the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// WebSockets: no ALPN at all.
    None,
    /// REST: `http/1.1` only.
    Http11,
}

/// The ALPN value REST offers.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// TLS set-up failures; each names the file and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "trust roots {}: {reason}; give a readable PEM file of CA certificates",
        path.display()
    )]
    ExtraCaUnreadable { path: PathBuf, reason: String },
    #[error(
        "trust roots {}: the file holds no certificate; give a PEM file with at least one \
         -----BEGIN CERTIFICATE----- block",
        path.display()
    )]
    ExtraCaEmpty { path: PathBuf },
    #[error(
        "trust roots {}: certificate #{index} is not usable as a trust root: {source}",
        path.display()
    )]
    ExtraCaRejected {
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
}

/// A verifying client configuration: webpki roots plus every certificate in `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>, alpn: Alpn) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for (i, cert) in read_extra_ca(path)?.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|source| TlsError::ExtraCaRejected {
                    path: path.to_owned(),
                    index: i + 1,
                    source,
                })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = match alpn {
        Alpn::None => Vec::new(),
        Alpn::Http11 => vec![ALPN_HTTP11.to_vec()],
    };
    Ok(Arc::new(cfg))
}

/// Every `CERTIFICATE` block of a PEM file (other blocks, such as keys, are skipped), read
/// with a size bound: a folder, a device, garbage or a huge file is a clear error.
pub fn read_extra_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes =
        crate::config::read_bounded(path, crate::config::MAX_CA_BYTES).map_err(|reason| {
            TlsError::ExtraCaUnreadable {
                path: path.to_owned(),
                reason,
            }
        })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::ExtraCaUnreadable {
            path: path.to_owned(),
            reason: format!("it is not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::ExtraCaEmpty {
            path: path.to_owned(),
        });
    }
    // Each certificate must be usable as a trust root; check now, not at the first connect.
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|source| TlsError::ExtraCaRejected {
                path: path.to_owned(),
                index: i + 1,
                source,
            })?;
    }
    Ok(certs)
}

/// `cfg` with exactly the ALPN offer `alpn`; the same `Arc` when it already has it.
pub(crate) fn with_alpn(cfg: &Arc<ClientConfig>, alpn: Alpn) -> Arc<ClientConfig> {
    let want: &[&[u8]] = match alpn {
        Alpn::None => &[],
        Alpn::Http11 => &[ALPN_HTTP11],
    };
    if cfg
        .alpn_protocols
        .iter()
        .map(Vec::as_slice)
        .eq(want.iter().copied())
    {
        return Arc::clone(cfg);
    }
    let mut c = ClientConfig::clone(cfg);
    c.alpn_protocols = want.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// Why a connection could not be made. Shared by WebSockets and REST.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url}: not a ws://, wss://, http:// or https:// URL with a host (fix the endpoint)")]
    Url { url: String },
    #[error(
        "{url}: not connected within {timeout:?} (check the host, port and firewall, or raise \
         the connect timeout)"
    )]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: cannot resolve {host} (check the host name and DNS): {source}")]
    Dns {
        url: String,
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: TCP connect failed (is the port right and reachable?): {source}")]
    Tcp {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{url}: TLS handshake failed (is the server certificate valid for this host and \
         trusted? add its CA with [tls] extra_ca): {source}"
    )]
    Tls {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{url}: the server answered the WebSocket upgrade with HTTP {status} (check the URL's \
         path and query)"
    )]
    Rejected { url: String, status: u16 },
    #[error("{url}: WebSocket handshake failed: {source}")]
    Handshake {
        url: String,
        #[source]
        source: async_tungstenite::tungstenite::Error,
    },
}

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout { .. })
    }
}

/// A connected byte stream: plain TCP or TLS over TCP. Dropping it closes the socket.
///
/// The TLS state is boxed once per connection (it is large); reads and writes allocate
/// nothing.
pub enum Transport {
    Plain(Async<TcpStream>),
    Tls(Box<TlsStream<Async<TcpStream>>>),
}

impl Transport {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s.get_ref(),
            Transport::Tls(s) => s.get_ref().0.get_ref(),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_close(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// Where a URL points: TLS or not, host and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub tls: bool,
    /// Without IPv6 brackets.
    pub host: &'a str,
    pub port: u16,
}

/// Splits an authority `host[:port]` (an IPv6 host in brackets) into the host without
/// brackets and the port, if any. `None` for credentials, an empty host, or a port that is not
/// a number from 1 to 65535.
pub fn split_authority(auth: &str) -> Option<(&str, Option<u16>)> {
    if auth.contains('@') {
        return None;
    }
    let (host, port) = match auth.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':')?)),
            }
        }
        None => match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        },
    };
    if host.is_empty() || host.contains([':', '[', ']']) && !auth.starts_with('[') {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// Splits `scheme://host[:port]/...` (`ws`, `wss`, `http`, `https`) into a [`Target`], with
/// the same parser the config uses (`http::Uri`, then [`split_authority`]).
pub fn split_url(url: &str) -> Option<Target<'_>> {
    let uri: http::Uri = url.parse().ok()?;
    let tls = match uri.scheme_str()? {
        "wss" | "https" => true,
        "ws" | "http" => false,
        _ => return None,
    };
    let len = uri.authority()?.as_str().len();
    // Borrow from `url` itself: the authority follows `scheme://`.
    let start = url.find("://")? + 3;
    let (host, port) = split_authority(url.get(start..start + len)?)?;
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    Some(Target { tls, host, port })
}

/// Resolves and connects to `target`, with TCP_NODELAY, then runs the TLS handshake when the
/// target asks for TLS (SNI and verification against `target.host`).
///
/// `url` only labels errors. No timeout: the caller bounds the whole handshake. Only `net`'s
/// connection types call this, and only with the budget permit their connection will hold
/// (`_permit` is the proof): no socket can be opened outside the budget.
pub(super) async fn connect_transport(
    url: &str,
    target: Target<'_>,
    tls: &Arc<ClientConfig>,
    _permit: &Permit,
    user_timeout: Option<Duration>,
) -> Result<Transport, ConnectError> {
    let addrs = smol::net::resolve((target.host, target.port))
        .await
        .map_err(|source| ConnectError::Dns {
            url: url.to_owned(),
            host: target.host.to_owned(),
            source,
        })?;
    if addrs.is_empty() {
        return Err(ConnectError::Dns {
            url: url.to_owned(),
            host: target.host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address for this name"),
        });
    }
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        match Async::<TcpStream>::connect(addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(tcp) = tcp else {
        return Err(ConnectError::Tcp {
            url: url.to_owned(),
            source: last.unwrap_or_else(|| io::Error::other("no address to connect to")),
        });
    };
    // Latency matters more than segment count for market data. Failing to set it is not
    // worth failing the connection for.
    if let Err(err) = tcp.get_ref().set_nodelay(true) {
        tracing::debug!(%err, url, "TCP_NODELAY not set");
    }
    // Unacknowledged data older than this ends the connection in the kernel too (a peer gone
    // without a FIN or RST). Best effort, like TCP_NODELAY.
    if let Some(t) = user_timeout {
        let ms = u32::try_from(t.as_millis()).unwrap_or(u32::MAX);
        if let Err(err) = rustix::net::sockopt::set_tcp_user_timeout(tcp.get_ref(), ms) {
            tracing::debug!(%err, url, "TCP_USER_TIMEOUT not set");
        }
    }
    if !target.tls {
        return Ok(Transport::Plain(tcp));
    }
    let name = ServerName::try_from(target.host.to_owned()).map_err(|_| ConnectError::Url {
        url: url.to_owned(),
    })?;
    let stream = TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            url: url.to_owned(),
            source,
        })?;
    Ok(Transport::Tls(Box::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tls: bool, host: &str, port: u16) -> Option<Target<'_>> {
        Some(Target { tls, host, port })
    }

    #[test]
    fn urls_split_into_tls_host_and_port() {
        // TC0: explicit port, path and query.
        assert_eq!(
            split_url("wss://stream.binance.com:9443/stream?x=1"),
            t(true, "stream.binance.com", 9443)
        );
        // TC1: default TLS port.
        assert_eq!(
            split_url("wss://fstream.binance.com/public"),
            t(true, "fstream.binance.com", 443)
        );
        // TC2: plain, IP literal.
        assert_eq!(
            split_url("ws://127.0.0.1:8080"),
            t(false, "127.0.0.1", 8080)
        );
        assert_eq!(split_url("http://example.com"), t(false, "example.com", 80));
        // TC3: IPv6 literal with and without port.
        assert_eq!(split_url("https://[::1]:4443/x"), t(true, "::1", 4443));
        assert_eq!(split_url("https://[::1]/x"), t(true, "::1", 443));
        // TC4: rejected shapes.
        assert_eq!(split_url("ftp://x"), None);
        assert_eq!(split_url("wss://:443"), None);
        assert_eq!(split_url("wss://host:notaport/"), None);
        assert_eq!(split_url("wss://user@host/"), None);
        assert_eq!(split_url("wss://[::1]x/"), None);
    }

    #[test]
    fn alpn_is_exactly_what_was_asked_for() {
        let ws = client_config(None, Alpn::None).expect("config");
        let rest = client_config(None, Alpn::Http11).expect("config");
        assert!(ws.alpn_protocols.is_empty());
        assert_eq!(rest.alpn_protocols, vec![ALPN_HTTP11.to_vec()]);
        assert!(Arc::ptr_eq(&with_alpn(&rest, Alpn::Http11), &rest));
        assert_eq!(
            with_alpn(&ws, Alpn::Http11).alpn_protocols,
            rest.alpn_protocols
        );
        assert!(with_alpn(&rest, Alpn::None).alpn_protocols.is_empty());
    }

    #[test]
    fn a_missing_or_empty_extra_ca_names_the_file() {
        let missing = Path::new("/nonexistent/marketbox-ca.pem");
        let err = client_config(Some(missing), Alpn::None).expect_err("missing file");
        assert!(matches!(err, TlsError::ExtraCaUnreadable { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/marketbox-ca.pem"));

        let empty = std::env::temp_dir().join(format!(
            "marketbox-empty-ca-{}-{}.pem",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = client_config(Some(&empty), Alpn::None).expect_err("no certificate");
        let _ = std::fs::remove_file(&empty);
        assert!(matches!(err, TlsError::ExtraCaEmpty { .. }), "{err}");
        assert!(err.to_string().contains(&*empty.to_string_lossy()));
    }
}
