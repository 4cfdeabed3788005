//! WebSocket connections that hold their budget permit.
//!
//! Design: [`WsConn`] owns the WebSocket stream (over a [`Transport`]: plain TCP for `ws://`,
//! TLS for `wss://`) and the [`Permit`]. The stream field is declared first, so dropping a
//! `WsConn` closes the socket (the fd is released in `Drop`, no task involved) and only then
//! returns the permit to the budget (DESIGN rule 2). [`connect`] takes the permit by value: a
//! caller that was refused one cannot even try.
//!
//! Frames and messages are bounded by [`WsOptions`]. tungstenite checks a frame's declared
//! length before it reads the payload, so an oversized frame costs no allocation; it surfaces
//! as [`WsError::Oversized`], a variant of its own so callers can count it (it is the venue's
//! fault, not the network's), and ends the connection.
//!
//! ## Pings
//! tungstenite queues the pong answering a ping by itself. [`WsConn::next`] writes it out in
//! the same poll that returns the `Ping` and keeps retrying on every later poll until it is
//! flushed, so callers need do nothing; calling [`WsConn::flush`] after a `Ping` is harmless.
//!
//! ## Cancel safety
//! [`WsConn::next`] is cancel-safe: it holds no state across polls (partial frames stay in
//! tungstenite's read buffer, a queued pong in its write buffer), so racing it against a timer
//! with `or` and dropping it loses nothing. The sends (`send_*`, `flush`) are not: a send
//! cancelled half way may leave its frame queued and partly written, and the next send or
//! flush completes it. Callers should not race sends; if they do, they must treat the
//! connection as unusable afterwards. Each send races [`WsOptions::send_timeout`] itself and
//! fails with [`WsError::Stalled`] when the peer stops reading; the connection is then
//! finished. [`WsConn::close`] is bounded by its own timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::{self, Bytes, protocol::WebSocketConfig};
use futures_lite::{FutureExt, Stream};
use futures_rustls::rustls::ClientConfig;
use futures_util::{Sink, SinkExt};
use smol::Timer;

pub use super::tls::ConnectError;
pub use async_tungstenite::tungstenite::Message;

use super::tls::{self, Alpn, Transport};
use crate::budget::Permit;

/// Limits and timeouts of a WebSocket connection.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// Bounds DNS + TCP + TLS + the WebSocket upgrade together.
    pub connect_timeout: Duration,
    /// Largest frame accepted (its declared length is checked before reading it).
    pub max_frame: usize,
    /// Largest message accepted (a fragmented message is the sum of its frames).
    pub max_message: usize,
    /// How long [`WsConn::close`] waits for the close handshake before dropping the socket.
    pub close_timeout: Duration,
    /// Longest a send (or flush) may take: a peer that stopped reading fills its window and
    /// ours, and a send waits forever unless something stops it. Also set as the socket's
    /// `TCP_USER_TIMEOUT`, so the kernel gives up on unacknowledged data as well.
    pub send_timeout: Duration,
    /// Bytes read from TLS per read (tungstenite's read buffer, allocated per connection and
    /// zeroed up to this size before each read). A larger frame grows it as needed.
    pub read_buffer: usize,
}

impl Default for WsOptions {
    /// 1 MiB frames and messages: a market-data frame is a few KiB, a full depth snapshot
    /// (which venues send over REST anyway) some hundreds.
    fn default() -> Self {
        WsOptions {
            connect_timeout: Duration::from_secs(10),
            max_frame: 1 << 20,
            max_message: 1 << 20,
            close_timeout: Duration::from_secs(1),
            send_timeout: Duration::from_secs(10),
            // A TLS record's worth (16 KiB of plaintext): the venues' frames are a few KiB,
            // and tungstenite's default (128 KiB) is resident per socket and zeroed per read.
            read_buffer: 16 << 10,
        }
    }
}

/// Why reading or writing a live WebSocket failed. Each ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The peer sent a frame (or message) larger than [`WsOptions`] allows.
    #[error(
        "the peer sent a {size}-byte frame or message, over the {limit}-byte limit (the \
         connection must be replaced; raise the limit only if the venue really sends these)"
    )]
    Oversized { size: usize, limit: usize },
    /// The close handshake finished, or the connection was already closed.
    #[error("the WebSocket is closed")]
    Closed,
    #[error("WebSocket I/O failed: {0}")]
    Io(#[source] io::Error),
    #[error("WebSocket protocol error: {0}")]
    Protocol(#[source] tungstenite::Error),
    /// A send did not complete in time: the peer stopped reading (or the path is dead). The
    /// frame may be half written, so the connection must be dropped.
    #[error(
        "a send did not complete within {after:?}: the peer is not reading (the connection \
         must be replaced)"
    )]
    Stalled { after: Duration },
}

impl From<tungstenite::Error> for WsError {
    fn from(e: tungstenite::Error) -> Self {
        use tungstenite::error::CapacityError;
        match e {
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                WsError::Oversized {
                    size,
                    limit: max_size,
                }
            }
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                WsError::Closed
            }
            tungstenite::Error::Io(e) => WsError::Io(e),
            e => WsError::Protocol(e),
        }
    }
}

/// Asks whether an error is an oversized frame (same answer as matching
/// [`WsError::Oversized`]).
pub trait WsErrorExt {
    fn is_oversized(&self) -> bool;
}

impl WsErrorExt for WsError {
    fn is_oversized(&self) -> bool {
        matches!(self, WsError::Oversized { .. })
    }
}

/// A live WebSocket and the permit that allows it.
pub struct WsConn {
    // Field order is drop order: the socket closes before the permit returns.
    stream: WebSocketStream<Transport>,
    /// A pong (or close reply) tungstenite queued is not flushed yet.
    reply_pending: bool,
    close_timeout: Duration,
    send_timeout: Duration,
    _permit: Permit,
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("local", &self.local_addr().ok())
            .field("peer", &self.stream.get_ref().peer_addr().ok())
            .finish_non_exhaustive()
    }
}

/// Connects to a `ws://` or `wss://` URL within `opts.connect_timeout` (DNS, TCP, TLS and
/// the upgrade together), holding `permit` for the life of the connection.
///
/// `tls` is used without ALPN whatever it offers. On failure the socket, if any, is closed
/// before the permit is returned.
pub async fn connect(
    url: &str,
    tls: &Arc<ClientConfig>,
    permit: Permit,
    opts: &WsOptions,
) -> Result<WsConn, ConnectError> {
    let attempt = async {
        let target = tls::split_url(url)
            .filter(|_| url.starts_with("ws://") || url.starts_with("wss://"))
            .ok_or_else(|| ConnectError::Url {
                url: url.to_owned(),
            })?;
        let tls = tls::with_alpn(tls, Alpn::None);
        let transport =
            tls::connect_transport(url, target, &tls, &permit, Some(opts.send_timeout)).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(opts.read_buffer)
            .max_message_size(Some(opts.max_message))
            .max_frame_size(Some(opts.max_frame));
        match async_tungstenite::client_async_with_config(url, transport, Some(config)).await {
            Ok((ws, _response)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => Err(ConnectError::Rejected {
                url: url.to_owned(),
                status: resp.status().as_u16(),
            }),
            Err(source) => Err(ConnectError::Handshake {
                url: url.to_owned(),
                source,
            }),
        }
    };
    let timeout = async {
        Timer::after(opts.connect_timeout).await;
        Err(ConnectError::Timeout {
            url: url.to_owned(),
            timeout: opts.connect_timeout,
        })
    };
    // The attempt (and any half-open socket in it) is dropped here, before `permit` can be.
    let stream = attempt.or(timeout).await?;
    Ok(WsConn {
        stream,
        reply_pending: false,
        close_timeout: opts.close_timeout,
        send_timeout: opts.send_timeout,
        _permit: permit,
    })
}

impl WsConn {
    /// The next message; `None` once the connection is closed (close handshake done or EOF).
    /// After an `Err` the connection is finished: drop it.
    ///
    /// Cancel-safe (see the module docs). Answers pings by itself.
    pub async fn next(&mut self) -> Option<Result<Message, WsError>> {
        std::future::poll_fn(|cx| {
            if self.reply_pending {
                self.poll_flush_reply(cx);
            }
            let item = match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(item) => item,
            };
            if let Some(Ok(Message::Ping(_) | Message::Close(_))) = &item {
                self.reply_pending = true;
                self.poll_flush_reply(cx);
            }
            Poll::Ready(item.map(|r| r.map_err(WsError::from)))
        })
        .await
    }

    /// Tries once to write out what tungstenite queued (a pong or a close reply).
    fn poll_flush_reply(&mut self, cx: &mut std::task::Context<'_>) {
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => self.reply_pending = false,
            Poll::Ready(Err(err)) => {
                // The socket is failing; the read side reports it on the next poll.
                tracing::debug!(%err, "writing a pong failed");
                self.reply_pending = false;
            }
        }
    }

    /// Sends a text frame and flushes it. Not cancel-safe.
    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send(Message::text(text)).await
    }

    /// Sends a ping and flushes it. Not cancel-safe.
    pub async fn send_ping(&mut self, payload: impl Into<Bytes>) -> Result<(), WsError> {
        self.send(Message::Ping(payload.into())).await
    }

    /// Sends an unsolicited pong (some venues want them as heartbeats) and flushes it. Pings
    /// are answered without this. Not cancel-safe.
    pub async fn send_pong(&mut self, payload: impl Into<Bytes>) -> Result<(), WsError> {
        self.send(Message::Pong(payload.into())).await
    }

    /// Sends and flushes one message within the send timeout; the flush also writes out a
    /// queued pong.
    async fn send(&mut self, msg: Message) -> Result<(), WsError> {
        let after = self.send_timeout;
        async { self.stream.send(msg).await.map_err(WsError::from) }
            .or(async {
                Timer::after(after).await;
                Err(WsError::Stalled { after })
            })
            .await?;
        self.reply_pending = false;
        Ok(())
    }

    /// Writes out everything queued, including an automatic pong, within the send timeout.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        let after = self.send_timeout;
        async { self.stream.flush().await.map_err(WsError::from) }
            .or(async {
                Timer::after(after).await;
                Err(WsError::Stalled { after })
            })
            .await?;
        self.reply_pending = false;
        Ok(())
    }

    /// Closes gracefully: sends a close frame and waits for the peer's, within
    /// [`WsOptions::close_timeout`]. Then the socket is closed and the permit returned,
    /// whatever happened.
    pub async fn close(mut self) {
        let timeout = self.close_timeout;
        async {
            if self.stream.close(None).await.is_err() {
                return;
            }
            // Read until the peer's close frame ends the stream.
            while let Some(Ok(_)) = self.next().await {}
        }
        .or(async {
            Timer::after(timeout).await;
        })
        .await;
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.get_ref().local_addr()
    }

    /// The remote address of the socket.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.get_ref().peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::error::CapacityError;

    #[test]
    fn tungstenite_errors_map_to_distinct_variants() {
        // TC0: a frame over the limit is Oversized, with both sizes.
        let e = WsError::from(tungstenite::Error::Capacity(
            CapacityError::MessageTooLong {
                size: 2_000_000,
                max_size: 1 << 20,
            },
        ));
        assert!(e.is_oversized());
        assert!(matches!(
            e,
            WsError::Oversized {
                size: 2_000_000,
                limit: 1_048_576
            }
        ));
        // TC1: closed is not an I/O failure.
        assert!(matches!(
            WsError::from(tungstenite::Error::ConnectionClosed),
            WsError::Closed
        ));
        // TC2: I/O keeps its source.
        let e = WsError::from(tungstenite::Error::Io(io::Error::from(
            io::ErrorKind::ConnectionReset,
        )));
        assert!(matches!(&e, WsError::Io(io) if io.kind() == io::ErrorKind::ConnectionReset));
        assert!(!e.is_oversized());
        // TC3: too many headers is a protocol error, not an oversized frame.
        let e = WsError::from(tungstenite::Error::Capacity(CapacityError::TooManyHeaders));
        assert!(matches!(e, WsError::Protocol(_)));
    }
}
