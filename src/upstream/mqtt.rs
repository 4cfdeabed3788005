//! The MQTT upstream (`[upstream] kind = "mqtt"`), with `rumqttc`.
//!
//! Design: one session = one `EventLoop` = one connection (see `link.rs` for the supervisor,
//! the permit and the runtime). `clean_session = false` with a stable client id
//! (`[upstream.mqtt] client_id`, default `marketbox-<device id>`), QoS from the config (1 by
//! default), topics `[prefix/]<channel>/<exchange>/<market>/<symbol>` (the prefix's dots
//! become levels), keep-alive, TLS for `mqtts://` (webpki roots plus `[upstream.mqtt] ca`,
//! our ring configuration), username and password from `password_file`.
//!
//! A record leaves the window only on its acknowledgement: PUBACK for QoS 1, PUBCOMP for QoS 2
//! (QoS 0: once written). `AsyncClient::publish` returns no packet id, so the session keeps the
//! sequence numbers of the requests it made, in order, and pairs each
//! `Outgoing::Publish(pkid)` event (emitted in request order) with the oldest; the
//! acknowledgement's pkid then names the record.
//!
//! A lost connection ends the session without letting `rumqttc` reconnect (its next `poll`
//! would). The next session is a new `EventLoop` with nothing pending, so it re-sends the whole
//! window itself, oldest first, whether or not the CONNACK says the broker kept the session:
//! QoS 1 allows the duplicates this can make, and the consumer sees them by `id`.
//!
//! Owns: the MQTT options, the pkid-to-record map. Must not touch: the permit or the runtime
//! (the supervisor's), the spool's internals.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};

use super::link::{self, ErrorKind, Handles, SessionEnd, SessionError, UpGuard, Window};
use super::spool::{RecordHeader, Spool};
use crate::config::{Config, SubjectPrefix, UpstreamUrl};

/// Publishes in flight at most (the window's size, and `rumqttc`'s inflight limit).
pub const WINDOW: usize = 512;
/// Largest message accepted by `rumqttc` for publishing.
const MAX_PACKET: usize = 1 << 20;

/// Everything a session needs, read once from the config (secrets read from their files).
#[derive(Clone)]
pub struct Settings {
    url: String,
    host: String,
    port: u16,
    tls: Option<Arc<futures_rustls::rustls::ClientConfig>>,
    client_id: String,
    qos: QoS,
    keep_alive: Duration,
    credentials: Option<(String, String)>,
    prefix: SubjectPrefix,
    connect_timeout: Duration,
}

impl Settings {
    pub fn from_config(cfg: &Config, url: &UpstreamUrl) -> Result<Settings, String> {
        let m = &cfg.upstream.mqtt;
        let tls = if url.is_tls() {
            Some(
                crate::net::tls::client_config(
                    m.ca.as_ref().map(|c| c.get_ref().as_path()),
                    crate::net::tls::Alpn::None,
                )
                .map_err(|e| format!("[upstream.mqtt] ca: {e}"))?,
            )
        } else {
            None
        };
        let credentials = match &m.username {
            Some(u) => Some((
                u.clone(),
                match &m.password_file {
                    Some(p) => {
                        super::nats::read_secret("[upstream.mqtt] password_file", p.get_ref())?
                    }
                    None => String::new(),
                },
            )),
            None => None,
        };
        Ok(Settings {
            url: url.as_str().to_owned(),
            host: url.host().to_owned(),
            port: url.port(),
            tls,
            client_id: m.client_id(&cfg.device.id),
            qos: match m.qos.0 {
                0 => QoS::AtMostOnce,
                2 => QoS::ExactlyOnce,
                _ => QoS::AtLeastOnce,
            },
            keep_alive: m.keep_alive.0,
            credentials,
            prefix: cfg.upstream.subject_prefix.clone(),
            connect_timeout: cfg.session.connect_timeout.0,
        })
    }
}

/// The topic of a record: `[prefix/]<channel>/<exchange>/<market>/<symbol>`.
pub fn topic(prefix: &SubjectPrefix, h: &RecordHeader) -> String {
    let mut s = String::with_capacity(64);
    for level in prefix.as_str().split('.').filter(|l| !l.is_empty()) {
        s.push_str(level);
        s.push('/');
    }
    s.push_str(h.channel.as_str());
    s.push('/');
    s.push_str(h.exchange.as_str());
    s.push('/');
    s.push_str(h.market.as_str());
    s.push('/');
    s.push_str(h.symbol.as_str());
    s
}

fn classify(err: &ConnectionError, url: &str, connected: bool) -> SessionError {
    match err {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => SessionError::new(
            ErrorKind::Auth,
            format!(
                "[upstream] url {url}: the broker refused the credentials ({code:?}); check \
                 [upstream.mqtt] username and password_file"
            ),
        ),
        ConnectionError::ConnectionRefused(code) => SessionError::new(
            ErrorKind::Connect,
            format!(
                "[upstream] url {url}: the broker refused the connection ({code:?}); check \
                 [upstream.mqtt] client_id"
            ),
        ),
        ConnectionError::Tls(e) => SessionError::new(
            ErrorKind::Tls,
            format!(
                "[upstream] url {url}: TLS failed ({e}); is the broker certificate valid for \
                 this host and trusted? add its CA with [upstream.mqtt] ca"
            ),
        ),
        e if connected => SessionError::new(
            ErrorKind::Disconnected,
            format!(
                "[upstream] url {url}: connection lost ({e}); re-sending what was unacknowledged"
            ),
        ),
        e => SessionError::new(
            ErrorKind::Connect,
            format!(
                "[upstream] url {url}: cannot connect ({e}); is the MQTT broker running and reachable?"
            ),
        ),
    }
}

fn options(s: &Settings) -> MqttOptions {
    let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    o.set_keep_alive(s.keep_alive)
        .set_clean_session(false)
        .set_inflight(WINDOW as u16)
        .set_request_channel_capacity(WINDOW)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some((u, p)) = &s.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &s.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    o
}

/// One connection's life; see the module doc.
pub async fn session(s: &Settings, spool: &Spool, window: &mut Window, h: &Handles) -> SessionEnd {
    let (client, mut events) = AsyncClient::new(options(s), WINDOW);
    let mut net = events.network_options();
    net.set_connection_timeout(s.connect_timeout.as_secs().max(1));
    events.set_network_options(net);
    // Connect: the first poll returns the CONNACK or the reason there is none.
    match events.poll().await {
        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
            tracing::info!(
                url = %s.url,
                session_present = ack.session_present,
                resending = window.len(),
                "upstream connected"
            );
        }
        Ok(other) => {
            return SessionEnd::Failed {
                error: SessionError::new(
                    ErrorKind::Connect,
                    format!("[upstream] url {}: expected CONNACK, got {other:?}", s.url),
                ),
                connected: false,
            };
        }
        Err(e) => {
            return SessionEnd::Failed {
                error: classify(&e, &s.url, false),
                connected: false,
            };
        }
    }
    let _up = UpGuard::new(&h.up);
    window.resend_all();
    let mut requested: VecDeque<u64> = VecDeque::new();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut scratch = VecDeque::new();
    let mut spool_open = true;
    loop {
        issue(&client, s, window, &mut requested, h);
        if !spool_open && window.is_empty() {
            let _ = client.try_disconnect();
            return SessionEnd::Drained;
        }
        // The poll future is never dropped before it completes (rumqttc's poll is not
        // cancel safe); records arriving meanwhile are issued from inside the wait.
        let event = {
            let poll = events.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    biased;
                    ev = &mut poll => break ev,
                    more = link::fill(spool, window, &mut scratch), if spool_open => {
                        spool_open = more;
                        issue(&client, s, window, &mut requested, h);
                        if !spool_open && window.is_empty() {
                            // Nothing left to wait for: ending here drops the poll, and the
                            // event loop with it.
                            return SessionEnd::Drained;
                        }
                    }
                }
            }
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let Some(sseq) = requested.pop_front() else {
                    continue;
                };
                if s.qos == QoS::AtMostOnce {
                    link::acked(h, window, spool, sseq);
                } else {
                    in_flight.insert(pkid, sseq);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) if s.qos == QoS::AtLeastOnce => {
                if let Some(sseq) = in_flight.remove(&ack.pkid) {
                    link::acked(h, window, spool, sseq);
                }
            }
            Ok(Event::Incoming(Packet::PubComp(ack))) if s.qos == QoS::ExactlyOnce => {
                if let Some(sseq) = in_flight.remove(&ack.pkid) {
                    link::acked(h, window, spool, sseq);
                }
            }
            Ok(_) => {}
            Err(e) => {
                return SessionEnd::Failed {
                    error: classify(&e, &s.url, true),
                    connected: true,
                };
            }
        }
    }
}

/// Hands unsent records to the client while its request queue has room.
fn issue(
    client: &AsyncClient,
    s: &Settings,
    window: &mut Window,
    requested: &mut VecDeque<u64>,
    h: &Handles,
) {
    while let Some(rec) = window.next_unsent() {
        let sseq = rec.sseq;
        match client.try_publish(
            topic(&s.prefix, &rec.header),
            s.qos,
            false,
            rec.payload.clone(),
        ) {
            Ok(()) => {
                requested.push_back(sseq);
                window.mark_sent();
                h.published.inc();
            }
            // The request queue is full: the event loop takes more as it goes.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Channel, Exchange, Market, MsgId, Symbol};

    #[test]
    fn topics_use_slashes_and_the_prefix_levels() {
        let h = RecordHeader {
            exchange: Exchange::Okx,
            market: Market::Perpetual,
            symbol: Symbol::parse("ETH-USDT").expect("valid"),
            channel: Channel::FundingRate,
            seq: 1,
            id: MsgId::new(),
            ts_local_ns: 0,
        };
        assert_eq!(
            topic(&SubjectPrefix::default(), &h),
            "funding_rate/okx/perpetual/ETH-USDT"
        );
        assert_eq!(
            topic(&SubjectPrefix::parse("md.eu").expect("valid"), &h),
            "md/eu/funding_rate/okx/perpetual/ETH-USDT"
        );
    }
}
