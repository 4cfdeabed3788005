//! WebSocket connections that hold their budget permit.
//!
//! Design: [`WsConn`] owns the stream (plain TCP for `ws://`, TLS for `wss://`) and the
//! [`Permit`]; the stream field is declared first so the socket is closed before the permit is
//! returned. Frames and messages are bounded (`WsOptions`): an oversized frame is an error the
//! caller counts, never an allocation the venue controls.
//!
//! ## Cancel safety
//! [`WsConn::next`] is cancel-safe: tungstenite keeps partial frames in its own buffer, so a
//! read raced against a timer and dropped loses nothing. Sends are not cancel-safe; callers
//! never race them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt, StreamExt};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use futures_rustls::rustls::ClientConfig;
use futures_util::SinkExt;
use rustls_pki_types::ServerName;
use smol::Async;
use smol::Timer;

pub use async_tungstenite::tungstenite::{Error as WsError, Message};

use crate::budget::Permit;

/// Limits and timeouts of a WebSocket connection.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// DNS + TCP + TLS + WebSocket handshake.
    pub connect_timeout: Duration,
    /// Largest message (and frame) accepted.
    pub max_message: usize,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            connect_timeout: Duration::from_secs(10),
            max_message: 1 << 20,
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url}: not a ws:// or wss:// URL with a host")]
    Url { url: String },
    #[error("{url}: no answer within {timeout:?} (check the host, port and firewall)")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: cannot resolve {host}: {source}")]
    Dns {
        url: String,
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: TCP connect failed: {source}")]
    Tcp {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{url}: TLS handshake failed (is the certificate trusted? see [tls] extra_ca): {source}"
    )]
    Tls {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: WebSocket handshake failed: {source}")]
    Handshake {
        url: String,
        #[source]
        source: WsError,
    },
}

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout { .. })
    }
}

/// Counts oversized frames separately: they are the venue's fault, not the network's.
pub trait WsErrorExt {
    fn is_oversized(&self) -> bool;
}

impl WsErrorExt for WsError {
    fn is_oversized(&self) -> bool {
        matches!(self, WsError::Capacity(_))
    }
}

/// Plain or TLS byte stream.
pub enum MaybeTls {
    Plain(Async<std::net::TcpStream>),
    Tls(Box<TlsStream<Async<std::net::TcpStream>>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_close(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// Opens a TCP (+TLS) byte stream to `host:port`.
pub async fn connect_stream(
    url: &str,
    host: &str,
    port: u16,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<MaybeTls, ConnectError> {
    let addrs = smol::net::resolve((host, port))
        .await
        .map_err(|source| ConnectError::Dns {
            url: url.to_owned(),
            host: host.to_owned(),
            source,
        })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    let mut tcp = None;
    for addr in addrs {
        match Async::<std::net::TcpStream>::connect(addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let tcp = tcp.ok_or_else(|| ConnectError::Tcp {
        url: url.to_owned(),
        source: last,
    })?;
    // Latency matters more than segment count for market data.
    let _ = tcp.get_ref().set_nodelay(true);
    match tls {
        None => Ok(MaybeTls::Plain(tcp)),
        Some(cfg) => {
            let name = ServerName::try_from(host.to_owned()).map_err(|_| ConnectError::Url {
                url: url.to_owned(),
            })?;
            let stream = TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    url: url.to_owned(),
                    source,
                })?;
            Ok(MaybeTls::Tls(Box::new(stream)))
        }
    }
}

/// Splits `scheme://host[:port]/...` into (tls, host, port).
pub fn split_url(url: &str) -> Option<(bool, &str, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let tls = match scheme {
        "wss" | "https" => true,
        "ws" | "http" => false,
        _ => return None,
    };
    let authority = rest.split(['/', '?']).next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some((tls, host, port))
}

/// A live WebSocket and the permit that allows it. Field order matters: the stream drops
/// (closes the socket) before the permit returns to the budget.
pub struct WsConn {
    stream: WebSocketStream<MaybeTls>,
    _permit: Permit,
}

/// Connects within `opts.connect_timeout`, holding `permit` for the life of the connection.
pub async fn connect(
    url: &str,
    tls: &Arc<ClientConfig>,
    permit: Permit,
    opts: &WsOptions,
) -> Result<WsConn, ConnectError> {
    let attempt = async {
        let (secure, host, port) = split_url(url).ok_or_else(|| ConnectError::Url {
            url: url.to_owned(),
        })?;
        let stream = connect_stream(url, host, port, secure.then_some(tls)).await?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(opts.max_message))
            .max_frame_size(Some(opts.max_message));
        let (ws, _resp) = async_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|source| ConnectError::Handshake {
                url: url.to_owned(),
                source,
            })?;
        Ok(ws)
    };
    let timeout = async {
        Timer::after(opts.connect_timeout).await;
        Err(ConnectError::Timeout {
            url: url.to_owned(),
            timeout: opts.connect_timeout,
        })
    };
    let stream = attempt.or(timeout).await?;
    Ok(WsConn {
        stream,
        _permit: permit,
    })
}

impl WsConn {
    /// The next message; `None` when the stream ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Message, WsError>> {
        self.stream.next().await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.stream.send(Message::text(text)).await
    }

    pub async fn send_ping(&mut self, payload: Vec<u8>) -> Result<(), WsError> {
        self.stream.send(Message::Ping(payload.into())).await
    }

    /// Writes out what tungstenite queued (the automatic pong to a ping).
    pub async fn flush(&mut self) -> Result<(), WsError> {
        self.stream.flush().await
    }

    /// A graceful close, bounded to one second; the socket is dropped either way.
    pub async fn close(mut self) {
        let _ = async {
            let _ = self.stream.close(None).await;
        }
        .or(async {
            Timer::after(Duration::from_secs(1)).await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_tls_host_and_port() {
        assert_eq!(
            split_url("wss://stream.binance.com:9443/stream?x=1"),
            Some((true, "stream.binance.com", 9443))
        );
        assert_eq!(
            split_url("wss://fstream.binance.com/public"),
            Some((true, "fstream.binance.com", 443))
        );
        assert_eq!(
            split_url("ws://127.0.0.1:8080"),
            Some((false, "127.0.0.1", 8080))
        );
        assert_eq!(split_url("https://[::1]:4443/x"), Some((true, "::1", 4443)));
        assert_eq!(split_url("ftp://x"), None);
        assert_eq!(split_url("wss://:443"), None);
    }
}
