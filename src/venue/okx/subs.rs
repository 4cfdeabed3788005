//! OKX subscriptions on one socket: requests, acknowledgements, refusals, the hourly budget.
//!
//! Design: every planned arg is one [`Sub`] with a state named for what it waits for
//! ([`SubState`]). Requests are multi-arg (each well under the venue's 64 KB) and each takes
//! one token of the venue's 480 subscribe/unsubscribe requests per hour per connection (a
//! token bucket, shown in `marketbox_ws_subscribe_tokens`). An arg is acknowledged one by one;
//! an `error` event names only the request id, so refusals are remembered by request id (the
//! newest few) and matched to args when their acknowledgement deadline passes: refused or
//! never answered, an arg is given up until the next connection, logged once and counted by
//! code. Codes become metric labels only from an allow-list ([`code_label`]): a venue cannot
//! grow the label set.
//!
//! Owns: the subscription state of the socket. Must not touch: books, publishing or sockets.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

use super::wire::{Code, OkxChannel, Op};
use crate::metrics::{Metrics, SocketLabels, SubscribeErrorLabels};
use crate::model::Exchange;
use crate::session::rate::TokenBucket;

/// An arg not acknowledged this long after its request is given up (and counted).
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// Largest subscribe request we build (the venue allows 64 KB).
const MAX_REQUEST_BYTES: usize = 16 << 10;
/// OKX: 480 subscribe/unsubscribe requests per hour per connection.
pub const SUBSCRIBES_PER_HOUR: u32 = 480;
/// Refusals remembered while their args wait for their deadline.
const REFUSALS_KEPT: usize = 16;

/// The OKX error codes that may become a metric label: the WebSocket errors of the venue's
/// documentation. Anything else is `other`.
const KNOWN_CODES: [&str; 27] = [
    "60001", "60002", "60004", "60005", "60006", "60007", "60008", "60009", "60011", "60012",
    "60013", "60014", "60018", "60019", "60024", "60026", "60028", "60029", "60030", "60031",
    "60032", "63999", "64000", "64001", "64002", "64003", "64008",
];

/// The metric label of an OKX error code: the code itself when it is one the venue documents,
/// else `other`.
pub fn code_label(raw: &str) -> &'static str {
    KNOWN_CODES
        .iter()
        .find(|c| **c == raw)
        .copied()
        .unwrap_or("other")
}

/// What the venue said about one subscription arg on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// Not requested on this connection.
    Idle,
    /// Requested by request `id`, not acknowledged yet.
    Pending { id: u64, since: Instant },
    /// Acknowledged.
    Live,
    /// Refused by an error event, or never acknowledged: given up until the next connection.
    Failed,
}

/// One subscription arg.
#[derive(Debug)]
pub struct Sub {
    /// The arg exactly as sent.
    json: String,
    channel: OkxChannel,
    /// `instId`, or `instType` for `liquidation-orders`.
    key: String,
    state: SubState,
}

/// Every subscription of the socket.
pub struct Subscriptions {
    subs: Vec<Sub>,
    /// Error events by request id (the newest few), matched to args at their ack deadline.
    refused: VecDeque<(u64, Code)>,
    bucket: TokenBucket,
    tokens: Gauge,
    metrics: std::sync::Arc<Metrics>,
    socket: String,
    next_id: u64,
}

/// Splits `items` into consecutive batches whose request (args joined by commas, plus the
/// envelope) stays under `max` bytes. An item too large on its own goes alone.
pub fn batches(items: &[usize], len: impl Fn(usize) -> usize, max: usize) -> Vec<Vec<usize>> {
    const ENVELOPE: usize = 64;
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut size = ENVELOPE;
    for &i in items {
        let l = len(i) + 1;
        match out.last_mut() {
            Some(b) if size + l <= max => b.push(i),
            _ => {
                out.push(vec![i]);
                size = ENVELOPE;
            }
        }
        size += l;
    }
    out
}

impl Subscriptions {
    pub fn new(metrics: std::sync::Arc<Metrics>, socket: &str, now: Instant) -> Self {
        let tokens = metrics
            .subscribe_tokens
            .get_or_create(&SocketLabels {
                exchange: Exchange::Okx,
                socket: socket.to_owned(),
            })
            .clone();
        Subscriptions {
            subs: Vec::new(),
            refused: VecDeque::new(),
            bucket: TokenBucket::new(SUBSCRIBES_PER_HOUR, Duration::from_secs(3600), now),
            tokens,
            metrics,
            socket: socket.to_owned(),
            next_id: 1,
        }
    }

    /// Adds an arg (once); returns its index.
    pub fn add(&mut self, channel: OkxChannel, key: &str) -> usize {
        if let Some(i) = self.find(channel, key) {
            return i;
        }
        self.subs.push(Sub {
            json: format!(
                r#"{{"channel":"{}","{}":"{key}"}}"#,
                channel.as_str(),
                channel.key_field()
            ),
            channel,
            key: key.to_owned(),
            state: SubState::Idle,
        });
        self.subs.len() - 1
    }

    pub fn find(&self, channel: OkxChannel, key: &str) -> Option<usize> {
        self.subs
            .iter()
            .position(|s| s.channel == channel && s.key == key)
    }

    pub fn state(&self, i: usize) -> Option<SubState> {
        self.subs.get(i).map(|s| s.state)
    }

    /// A new connection: nothing is subscribed on it, and it has its own hourly budget.
    pub fn reconnected(&mut self, now: Instant) {
        for s in &mut self.subs {
            s.state = SubState::Idle;
        }
        self.refused.clear();
        self.bucket = TokenBucket::new(SUBSCRIBES_PER_HOUR, Duration::from_secs(3600), now);
    }

    /// Whether every arg is settled (acknowledged, refused or given up).
    pub fn settled(&self) -> bool {
        !self
            .subs
            .iter()
            .any(|s| matches!(s.state, SubState::Pending { .. }))
    }

    /// Requests left in the hourly budget now.
    pub fn tokens(&mut self, now: Instant) -> u32 {
        let n = self.bucket.available(now);
        self.tokens.set(i64::from(n));
        n
    }

    /// Queues `op` for the args at `which` in multi-arg requests each under the size limit,
    /// each taking one token of the hourly budget. A subscribe marks its args pending until
    /// the venue acknowledges them. Returns false when the budget was spent (the rest was not
    /// sent).
    pub fn request(
        &mut self,
        op: Op,
        which: &[usize],
        now: Instant,
        send: &mut Vec<String>,
    ) -> bool {
        let mut sent_all = true;
        for chunk in batches(which, |i| self.subs[i].json.len(), MAX_REQUEST_BYTES) {
            if self.bucket.take(now).is_err() {
                tracing::warn!(
                    op = op.as_str(),
                    args = chunk.len(),
                    "OKX subscribe budget (480 requests per hour per connection) spent; request not sent"
                );
                sent_all = false;
                break;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            let mut req = format!(r#"{{"id":"{id}","op":"{}","args":["#, op.as_str());
            for (n, &i) in chunk.iter().enumerate() {
                if n > 0 {
                    req.push(',');
                }
                req.push_str(&self.subs[i].json);
                if op == Op::Subscribe {
                    self.subs[i].state = SubState::Pending { id, since: now };
                }
            }
            req.push_str("]}");
            send.push(req);
        }
        self.tokens(now);
        sent_all
    }

    /// Every arg, in index order: (channel, key).
    pub fn args(&self) -> impl Iterator<Item = (OkxChannel, &str)> {
        self.subs.iter().map(|s| (s.channel, s.key.as_str()))
    }

    /// Drops the args at `which` (their unsubscribe already queued); indices after them move.
    pub fn remove(&mut self, which: &[usize]) {
        let mut i = 0;
        self.subs.retain(|_| {
            let keep = !which.contains(&i);
            i += 1;
            keep
        });
    }

    /// Subscribes the args not requested on this connection (added while it lived, or left
    /// over when the hourly budget was spent) as far as the budget allows.
    pub fn subscribe_idle(&mut self, now: Instant, send: &mut Vec<String>) -> bool {
        let idle: Vec<usize> = (0..self.subs.len())
            .filter(|i| self.subs[*i].state == SubState::Idle)
            .collect();
        if idle.is_empty() || self.bucket.available(now) == 0 {
            return idle.is_empty();
        }
        self.request(Op::Subscribe, &idle, now, send)
    }

    /// Subscribes every arg.
    pub fn subscribe_all(&mut self, now: Instant, send: &mut Vec<String>) -> bool {
        let all: Vec<usize> = (0..self.subs.len()).collect();
        self.request(Op::Subscribe, &all, now, send)
    }

    /// The venue acknowledged an arg.
    pub fn acked(&mut self, channel: OkxChannel, key: &str) {
        if let Some(i) = self.find(channel, key) {
            self.subs[i].state = SubState::Live;
        }
    }

    /// The venue refused request `id` (an `error` event): logged with the args it concerns,
    /// counted by code, remembered for the deadline.
    pub fn refused(&mut self, id: Option<&str>, code: &str, msg: &str) {
        let request = id.and_then(|id| id.parse::<u64>().ok());
        let args: Vec<&str> = self
            .subs
            .iter()
            .filter(|s| matches!(s.state, SubState::Pending { id, .. } if Some(id) == request))
            .map(|s| s.json.as_str())
            .collect();
        tracing::warn!(
            code,
            msg,
            request = id.unwrap_or("-"),
            pending_args = ?args,
            "OKX refused a request"
        );
        self.count_error(code_label(code));
        if let Some(id) = request {
            if self.refused.len() >= REFUSALS_KEPT {
                self.refused.pop_front();
            }
            self.refused.push_back((id, Code::new(code)));
        }
    }

    fn count_error(&self, code: &'static str) {
        self.metrics
            .subscribe_errors
            .get_or_create(&SubscribeErrorLabels {
                exchange: Exchange::Okx,
                socket: self.socket.clone(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Args whose ack deadline passed: refused (if their request drew an error event) or
    /// unanswered. Either way given up on this connection, logged once each and counted.
    pub fn expire(&mut self, now: Instant) {
        for i in 0..self.subs.len() {
            let SubState::Pending { id, since } = self.subs[i].state else {
                continue;
            };
            if now.saturating_duration_since(since) < ACK_WAIT {
                continue;
            }
            self.subs[i].state = SubState::Failed;
            let arg = &self.subs[i].json;
            match self.refused.iter().find(|(r, _)| *r == id) {
                Some((_, code)) => {
                    tracing::warn!(%arg, code = %code, request = id, "OKX refused this subscription; it stays off until the next connection");
                }
                None => {
                    tracing::warn!(%arg, request = id, wait = ?ACK_WAIT, "OKX never acknowledged this subscription; it stays off until the next connection");
                    self.count_error("no_ack");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_under_the_request_limit_and_keep_order() {
        let lens = [40usize, 40, 40, 40, 40];
        // Envelope 64 + (41 each): two fit in 150, the third would not.
        let b = batches(&[0, 1, 2, 3, 4], |i| lens[i], 150);
        assert_eq!(b, vec![vec![0, 1], vec![2, 3], vec![4]]);
        for chunk in &b {
            assert!(64 + chunk.iter().map(|&i| lens[i] + 1).sum::<usize>() <= 150);
        }
        // Everything in one request when it fits; an oversized item goes alone.
        assert_eq!(batches(&[0, 1], |i| lens[i], 1 << 14), vec![vec![0, 1]]);
        assert_eq!(
            batches(&[0, 1], |i| [500, 10][i], 150),
            vec![vec![0], vec![1]]
        );
        assert!(batches(&[], |_| 1, 150).is_empty());
    }

    #[test]
    fn only_documented_codes_become_labels() {
        assert_eq!(code_label("60018"), "60018");
        assert_eq!(code_label("64008"), "64008");
        for other in ["12345678", "60018 ", "", "<script>", "99999"] {
            assert_eq!(code_label(other), "other", "{other:?}");
        }
    }

    #[test]
    fn args_are_pending_until_acked_and_given_up_at_the_deadline() {
        let m = std::sync::Arc::new(Metrics::new());
        let t0 = Instant::now();
        let mut s = Subscriptions::new(m.clone(), "public", t0);
        let a = s.add(OkxChannel::Books, "BTC-USDT");
        let b = s.add(OkxChannel::LiquidationOrders, "SWAP");
        assert_eq!(s.add(OkxChannel::Books, "BTC-USDT"), a, "added once");
        let mut send = Vec::new();
        // TC0: one request carries both args; both pending; not settled.
        assert!(s.subscribe_all(t0, &mut send));
        assert_eq!(send.len(), 1);
        assert!(send[0].contains(r#""instType":"SWAP""#), "{}", send[0]);
        assert!(!s.settled());
        // TC1: an ack settles its arg; the other one is given up at the deadline and counted.
        s.acked(OkxChannel::Books, "BTC-USDT");
        assert_eq!(s.state(a), Some(SubState::Live));
        s.expire(t0 + ACK_WAIT - Duration::from_millis(1));
        assert!(matches!(s.state(b), Some(SubState::Pending { .. })));
        s.expire(t0 + ACK_WAIT);
        assert_eq!(s.state(b), Some(SubState::Failed));
        assert!(s.settled());
        assert_eq!(
            m.sum("marketbox_ws_subscribe_errors_total", &[("code", "no_ack")]),
            1
        );
        // TC2: a reconnect forgets it all and refills the budget.
        s.reconnected(t0);
        assert_eq!(s.state(b), Some(SubState::Idle));
        assert_eq!(s.tokens(t0), SUBSCRIBES_PER_HOUR);
    }
}
