//! The NATS JetStream upstream (`[upstream] kind = "nats"`), with `async-nats`.
//!
//! Design: one session = one client = one connection (see `link.rs` for the supervisor, the
//! permit and the runtime). A session:
//!
//! 1. connects (`nats://` or `tls://`, verified against the webpki roots plus
//!    `[upstream.nats] ca`; token, user/password or creds file read from their files; never
//!    logged). The client's own reconnect is disabled: its reconnect delay is made endless,
//!    and the session ends at the first `Disconnected` event, so nothing newer can overtake
//!    records lost with the old socket;
//! 2. makes sure the stream exists: creates `[upstream.nats] stream` (file storage, subjects
//!    `[prefix.]<channel>.>` for the seven channels, `duplicate_window`, `max_age`,
//!    `max_bytes`) when missing; when present, refuses a stream whose subjects do not take
//!    ours and says which, and warns about each other setting that differs from the config;
//! 3. re-sends the window, then publishes pipelined: up to the window's size in flight, each
//!    with `Nats-Msg-Id` = the message `id`, acknowledgements awaited in order. A failed or
//!    timed-out acknowledgement ends the session (the window is re-sent by the next one, in
//!    order; JetStream drops the copies it already stored).
//!
//! Owns: the NATS connect options, the stream check, the publish pipeline. Must not touch:
//! the permit or the runtime (the supervisor's), the spool's internals.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{ConnectErrorKind, ConnectOptions, Event, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use super::link::{self, ErrorKind, Handles, SessionEnd, SessionError, UpGuard, Window};
use super::spool::{Record, Spool};
use crate::config::{Config, NatsConfig, SubjectPrefix, UpstreamUrl};
use crate::model::Channel;

/// Publishes in flight at most (the window's size).
pub const WINDOW: usize = 512;
/// How long a JetStream acknowledgement may take before the session is replaced.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a session needs, read once from the config (secrets read from their files).
#[derive(Clone)]
pub struct Settings {
    url: String,
    tls: bool,
    prefix: SubjectPrefix,
    nats: NatsConfig,
    tls_config: Arc<futures_rustls::rustls::ClientConfig>,
    auth: Auth,
    connect_timeout: Duration,
}

#[derive(Clone)]
enum Auth {
    None,
    Token(String),
    UserPassword(String, String),
    Creds(std::path::PathBuf),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never printed.
        f.write_str(match self {
            Auth::None => "none",
            Auth::Token(_) => "token",
            Auth::UserPassword(..) => "user/password",
            Auth::Creds(_) => "creds file",
        })
    }
}

/// Reads a secret file (bounded), without its trailing newline.
pub(crate) fn read_secret(key: &str, path: &std::path::Path) -> Result<String, String> {
    let bytes = crate::config::read_bounded(path, crate::config::MAX_SECRET_BYTES)
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let s = String::from_utf8(bytes)
        .map_err(|_| format!("{key} {}: it is not UTF-8 text", path.display()))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_owned())
}

impl Settings {
    pub fn from_config(cfg: &Config, url: &UpstreamUrl) -> Result<Settings, String> {
        let n = &cfg.upstream.nats;
        let auth = if let Some(t) = &n.token_file {
            Auth::Token(read_secret("[upstream.nats] token_file", t.get_ref())?)
        } else if let Some(c) = &n.creds_file {
            Auth::Creds(c.get_ref().clone())
        } else if let Some(user) = &n.user {
            let pass = match &n.password_file {
                Some(p) => read_secret("[upstream.nats] password_file", p.get_ref())?,
                None => String::new(),
            };
            Auth::UserPassword(user.clone(), pass)
        } else {
            Auth::None
        };
        let tls_config = crate::net::tls::client_config(
            n.ca.as_ref().map(|c| c.get_ref().as_path()),
            crate::net::tls::Alpn::None,
        )
        .map_err(|e| format!("[upstream.nats] ca: {e}"))?;
        Ok(Settings {
            url: url.as_str().to_owned(),
            tls: url.is_tls(),
            prefix: cfg.upstream.subject_prefix.clone(),
            nats: n.clone(),
            tls_config,
            auth,
            connect_timeout: cfg.session.connect_timeout.0,
        })
    }
}

/// The subject of a record: `[prefix.]<channel>.<exchange>.<market>.<symbol>`.
pub fn subject(prefix: &SubjectPrefix, h: &super::spool::RecordHeader) -> String {
    let mut s = String::with_capacity(64);
    if !prefix.is_empty() {
        s.push_str(prefix.as_str());
        s.push('.');
    }
    let _ = write!(s, "{}.{}.{}.{}", h.channel, h.exchange, h.market, h.symbol);
    s
}

/// The stream's subjects: `[prefix.]<channel>.>` for every channel.
pub fn stream_subjects(prefix: &SubjectPrefix) -> Vec<String> {
    Channel::ALL
        .iter()
        .map(|c| {
            if prefix.is_empty() {
                format!("{c}.>")
            } else {
                format!("{}.{c}.>", prefix.as_str())
            }
        })
        .collect()
}

/// Whether every subject matching `filter` also matches the stream subject `stream`
/// (NATS wildcards: `*` one token, `>` the rest).
pub fn covers(stream: &str, filter: &str) -> bool {
    let mut s = stream.split('.');
    let mut f = filter.split('.');
    loop {
        match (s.next(), f.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b && b != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether a rustls error (a certificate the roots do not trust, a name that does not match,
/// a failed handshake) is somewhere in `err`'s chain; the client reports those as I/O.
fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<futures_rustls::rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<futures_rustls::rustls::Error>())
        {
            return true;
        }
        cur = e.source();
    }
    false
}

fn classify_connect(err: &async_nats::ConnectError, url: &str) -> SessionError {
    let kind = if is_tls_failure(err) {
        ConnectErrorKind::Tls
    } else {
        err.kind()
    };
    match kind {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            SessionError::new(
                ErrorKind::Auth,
                format!(
                    "[upstream] url {url}: the server refused the credentials ({err}); check \
                     [upstream.nats] token_file, user/password_file or creds_file"
                ),
            )
        }
        ConnectErrorKind::Tls => SessionError::new(
            ErrorKind::Tls,
            format!(
                "[upstream] url {url}: TLS failed ({err}); is the server certificate valid for \
                 this host and trusted? add its CA with [upstream.nats] ca"
            ),
        ),
        _ => SessionError::new(
            ErrorKind::Connect,
            format!(
                "[upstream] url {url}: cannot connect ({err}); is the NATS server running and reachable?"
            ),
        ),
    }
}

async fn connect(
    s: &Settings,
    lost: Arc<tokio::sync::Notify>,
) -> Result<async_nats::Client, SessionError> {
    let connected = Arc::new(AtomicBool::new(false));
    let gate = connected.clone();
    let mut opts = match &s.auth {
        Auth::Creds(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| {
                SessionError::new(
                    ErrorKind::Auth,
                    format!(
                        "[upstream.nats] creds_file {}: not a usable NATS credentials file: {e}",
                        path.display()
                    ),
                )
            })?,
        Auth::Token(t) => ConnectOptions::new().token(t.clone()),
        Auth::UserPassword(u, p) => ConnectOptions::new().user_and_password(u.clone(), p.clone()),
        Auth::None => ConnectOptions::new(),
    };
    opts = opts
        .name("marketbox")
        .connection_timeout(s.connect_timeout)
        .tls_client_config(futures_rustls::rustls::ClientConfig::clone(&s.tls_config))
        .require_tls(s.tls)
        .ignore_discovered_servers()
        .no_echo()
        // No reconnect inside the client: once connected, a reconnect attempt waits forever
        // and the session (which notices the disconnect at once) ends instead.
        .reconnect_delay_callback(move |_| {
            if gate.load(Ordering::Acquire) {
                Duration::from_secs(86_400 * 365)
            } else {
                Duration::ZERO
            }
        })
        .event_callback(move |event| {
            let lost = lost.clone();
            async move {
                if matches!(event, Event::Disconnected | Event::Closed) {
                    lost.notify_one();
                }
            }
        });
    let client = tokio::time::timeout(
        s.connect_timeout.saturating_add(Duration::from_secs(1)),
        opts.connect(s.url.as_str()),
    )
    .await
    .map_err(|_| {
        SessionError::new(
            ErrorKind::Connect,
            format!(
                "[upstream] url {}: no connection within {:?}",
                s.url, s.connect_timeout
            ),
        )
    })?
    .map_err(|e| classify_connect(&e, &s.url))?;
    connected.store(true, Ordering::Release);
    Ok(client)
}

/// Creates the stream when missing; checks it when present.
async fn ensure_stream(js: &jetstream::Context, s: &Settings) -> Result<(), SessionError> {
    let name = s.nats.stream.as_str();
    let want_subjects = stream_subjects(&s.prefix);
    let want_age = s.nats.max_age.map_or(Duration::ZERO, |d| d.0);
    let want_bytes = s.nats.max_bytes.map_or(-1, |b| b.0 as i64);
    let want_dup = s.nats.duplicate_window.0;
    let stream_err = |what: String| SessionError::new(ErrorKind::Stream, what);
    for attempt in 0..2 {
        match js.get_stream(name).await {
            Ok(st) => {
                let c = &st.cached_info().config;
                let missing: Vec<&String> = want_subjects
                    .iter()
                    .filter(|w| !c.subjects.iter().any(|have| covers(have, w)))
                    .collect();
                if !missing.is_empty() {
                    return Err(stream_err(format!(
                        "[upstream.nats] stream {name:?} exists with subjects {:?}, which do not \
                         take {:?}: publishing there would store nothing. Use another stream \
                         name, or add the subjects to the stream (nats stream edit)",
                        c.subjects, missing
                    )));
                }
                let mut differs = Vec::new();
                if c.storage != stream::StorageType::File {
                    differs.push(
                        "storage is memory, not file (messages die with the server)".to_owned(),
                    );
                }
                if c.duplicate_window != want_dup {
                    differs.push(format!(
                        "duplicate_window is {:?}, config says {:?}",
                        c.duplicate_window, want_dup
                    ));
                }
                if c.max_age != want_age {
                    differs.push(format!(
                        "max_age is {:?}, config says {:?} (0 = none)",
                        c.max_age, want_age
                    ));
                }
                if c.max_bytes != want_bytes {
                    differs.push(format!(
                        "max_bytes is {}, config says {} (-1 = none)",
                        c.max_bytes, want_bytes
                    ));
                }
                if !differs.is_empty() {
                    tracing::warn!(
                        stream = name,
                        "[upstream.nats] the existing stream differs from the config; using it as it is: {}",
                        differs.join("; ")
                    );
                }
                return Ok(());
            }
            Err(e) => {
                let not_found = matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                );
                if !not_found {
                    return Err(stream_err(format!(
                        "[upstream.nats] stream {name:?}: cannot look it up ({e}); is JetStream \
                         enabled on the server (nats-server -js) and allowed for this user?"
                    )));
                }
            }
        }
        let config = stream::Config {
            name: name.to_owned(),
            subjects: want_subjects.clone(),
            storage: stream::StorageType::File,
            max_age: want_age,
            max_bytes: want_bytes,
            max_messages: -1,
            max_messages_per_subject: -1,
            duplicate_window: want_dup,
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(_) => {
                tracing::info!(stream = name, subjects = ?want_subjects, "[upstream.nats] created the stream");
                return Ok(());
            }
            // Another box may have created it just now: look again once.
            Err(e) if attempt == 0 => {
                tracing::debug!(%e, "stream create failed; looking it up again");
            }
            Err(e) => {
                return Err(stream_err(format!(
                    "[upstream.nats] stream {name:?}: cannot create it ({e}); check \
                     duplicate_window (at most max_age), max_bytes and the server's JetStream limits"
                )));
            }
        }
    }
    Err(stream_err(format!(
        "[upstream.nats] stream {name:?}: neither found nor created"
    )))
}

type AckFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = (u64, Result<jetstream::publish::PublishAck, String>)>>,
>;

async fn publish(
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    rec: &Record,
) -> Result<AckFuture, SessionError> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", rec.header.id.as_str());
    let fut = js
        .publish_with_headers(
            subject(prefix, &rec.header),
            headers,
            Bytes::copy_from_slice(&rec.payload),
        )
        .await
        .map_err(|e| SessionError::new(ErrorKind::Publish, format!("publish failed: {e}")))?;
    let sseq = rec.sseq;
    Ok(Box::pin(async move {
        (sseq, fut.await.map_err(|e| e.to_string()))
    }))
}

/// One connection's life; see the module doc.
pub async fn session(s: &Settings, spool: &Spool, window: &mut Window, h: &Handles) -> SessionEnd {
    let lost = Arc::new(tokio::sync::Notify::new());
    let client = match connect(s, lost.clone()).await {
        Ok(c) => c,
        Err(error) => {
            return SessionEnd::Failed {
                error,
                connected: false,
            };
        }
    };
    let mut js = jetstream::new(client);
    js.set_timeout(ACK_TIMEOUT);
    if let Err(error) = ensure_stream(&js, s).await {
        return SessionEnd::Failed {
            error,
            connected: false,
        };
    }
    let _up = UpGuard::new(&h.up);
    tracing::info!(url = %s.url, stream = s.nats.stream.as_str(), resending = window.len(), "upstream connected");
    window.resend_all();
    let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let mut scratch = std::collections::VecDeque::new();
    let mut spool_open = true;
    let failed = |error| SessionEnd::Failed {
        error,
        connected: true,
    };
    loop {
        while let Some(rec) = window.next_unsent() {
            match publish(&js, &s.prefix, rec).await {
                Ok(f) => acks.push_back(f),
                Err(e) => return failed(e),
            }
            window.mark_sent();
            h.published.inc();
        }
        if !spool_open && window.is_empty() {
            return SessionEnd::Drained;
        }
        tokio::select! {
            biased;
            _ = lost.notified() => {
                return failed(SessionError::new(
                    ErrorKind::Disconnected,
                    format!("[upstream] url {}: connection lost; re-sending {} unacknowledged messages on the next connection", s.url, window.len()),
                ));
            }
            Some((sseq, res)) = acks.next(), if !acks.is_empty() => match res {
                Ok(ack) => {
                    if ack.duplicate {
                        h.duplicates.inc();
                    }
                    link::acked(h, window, spool, sseq);
                }
                Err(e) => {
                    return failed(SessionError::new(
                        ErrorKind::Publish,
                        format!("[upstream.nats] stream {:?}: a publish was not acknowledged ({e}); reconnecting and re-sending in order", s.nats.stream.as_str()),
                    ));
                }
            },
            more = link::fill(spool, window, &mut scratch), if spool_open => {
                spool_open = more;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_subjects_cover_every_channel_under_the_prefix() {
        let none = SubjectPrefix::default();
        let p = SubjectPrefix::parse("md.eu").expect("valid");
        assert_eq!(stream_subjects(&none)[1], "trade.>");
        assert_eq!(stream_subjects(&p)[0], "md.eu.orderbook.>");
        assert_eq!(stream_subjects(&p).len(), 7);
    }

    #[test]
    fn covers_follows_nats_wildcards() {
        // TC0: exact and `>`.
        assert!(covers("trade.>", "trade.>"));
        assert!(covers(">", "trade.>"));
        assert!(covers("md.>", "md.trade.>"));
        // TC1: `*` takes one token, never `>`.
        assert!(covers(
            "*.binance.spot.BTC-USDT",
            "trade.binance.spot.BTC-USDT"
        ));
        assert!(!covers("trade.*", "trade.>"));
        // TC2: other subjects.
        assert!(!covers("other.>", "trade.>"));
        assert!(!covers("trade", "trade.>"));
        assert!(!covers("trade.a.b", "trade.a"));
    }
}
