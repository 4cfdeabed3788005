//! The bounded spool between sessions and the upstream (DESIGN rule 5).
//!
//! Design: one preallocated byte ring of `[spool] ram_bytes`. A record is a fixed header
//! (stream names, sequence number, message id) followed by the encoded message. Pushing never
//! allocates and never blocks a session: when the ring is full the *oldest* records are dropped
//! until the new one fits, and every drop is counted (`marketbox_spool_dropped_total`). The
//! upstream task pops records in order. A record larger than the whole ring is refused and
//! counted the same way. (An on-disk segment spool plugs in behind the same `push`/`pop`.)
//!
//! Owns: record framing and the drop-oldest policy. Must not touch: encodings or sockets.

use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::model::{Channel, Exchange, Market, MsgId, Symbol};

/// What the upstream needs besides the payload: the subject parts and the de-duplication id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordHeader {
    pub exchange: Exchange,
    pub market: Market,
    pub symbol: Symbol,
    pub channel: Channel,
    pub seq: u64,
    pub id: MsgId,
}

/// Largest encoded header (postcard of `RecordHeader`).
const HEADER_MAX: usize = 160;
/// A length word of this value means "the rest of the buffer is unused, continue at 0".
const WRAP: u32 = u32::MAX;
const PREFIX: usize = 4 + 2;

/// Records laid out `[u32 total][u16 header len][header][payload]` from `tail` to `head`,
/// wrapping at the end of `buf`.
struct Ring {
    buf: Box<[u8]>,
    head: usize,
    tail: usize,
    count: usize,
    closed: bool,
}

impl Ring {
    fn cap(&self) -> usize {
        self.buf.len()
    }

    fn wrapped(&self) -> bool {
        self.head < self.tail || (self.head == self.tail && self.count > 0)
    }

    /// Where a record of `n` bytes can go now, writing a wrap marker if needed.
    fn place(&mut self, n: usize) -> Option<usize> {
        if self.count == 0 {
            self.head = 0;
            self.tail = 0;
            return (n <= self.cap()).then_some(0);
        }
        if self.wrapped() {
            return (self.tail - self.head >= n).then_some(self.head);
        }
        if self.cap() - self.head >= n {
            return Some(self.head);
        }
        if self.tail >= n {
            if self.cap() - self.head >= 4 {
                self.buf[self.head..self.head + 4].copy_from_slice(&WRAP.to_le_bytes());
            }
            self.head = 0;
            return Some(0);
        }
        None
    }

    /// Moves `tail` past a wrap marker or an unusable end.
    fn normalize_tail(&mut self) {
        if self.count == 0 {
            self.head = 0;
            self.tail = 0;
            return;
        }
        if self.cap() - self.tail < 4 || self.word(self.tail) == WRAP {
            self.tail = 0;
        }
    }

    fn word(&self, at: usize) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.buf[at..at + 4]);
        u32::from_le_bytes(w)
    }

    /// Removes the oldest record, returning its (header, payload) byte ranges.
    fn take_oldest(&mut self) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        if self.count == 0 {
            return None;
        }
        let at = self.tail;
        let total = self.word(at) as usize;
        let hlen = usize::from(u16::from_le_bytes([self.buf[at + 4], self.buf[at + 5]]));
        let header = at + PREFIX..at + PREFIX + hlen;
        let payload = at + PREFIX + hlen..at + total;
        self.tail = at + total;
        self.count -= 1;
        self.normalize_tail();
        Some((header, payload))
    }
}

/// Outcome of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Older records dropped to make room.
    pub dropped: usize,
    /// The record itself was refused (larger than the whole spool).
    pub refused: bool,
}

/// The spool handle; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<(Mutex<Ring>, Event)>,
    dropped: Counter,
    depth: Gauge,
}

impl Spool {
    /// A RAM spool of `bytes`, reporting into the given metrics.
    pub fn new(bytes: usize, dropped: Counter, depth: Gauge) -> Self {
        let ring = Ring {
            buf: vec![0u8; bytes].into_boxed_slice(),
            head: 0,
            tail: 0,
            count: 0,
            closed: false,
        };
        Spool {
            inner: Arc::new((Mutex::new(ring), Event::new())),
            dropped,
            depth,
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // A poisoned lock only means a panic elsewhere; the ring's invariants hold between calls.
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record, dropping the oldest ones if needed. Never blocks, never allocates.
    pub fn push(&self, header: &RecordHeader, payload: &[u8]) -> Pushed {
        let mut out = Pushed {
            dropped: 0,
            refused: false,
        };
        let mut hbuf = [0u8; HEADER_MAX];
        let hlen = match postcard::to_slice(header, &mut hbuf) {
            Ok(h) => h.len(),
            Err(_) => 0,
        };
        let total = PREFIX + hlen + payload.len();
        {
            let mut ring = self.ring();
            if hlen == 0 || payload.is_empty() || total > ring.cap() || total >= WRAP as usize {
                out.refused = true;
            } else {
                let at = loop {
                    if let Some(at) = ring.place(total) {
                        break at;
                    }
                    ring.take_oldest();
                    out.dropped += 1;
                };
                ring.buf[at..at + 4].copy_from_slice(&(total as u32).to_le_bytes());
                ring.buf[at + 4..at + 6].copy_from_slice(&(hlen as u16).to_le_bytes());
                ring.buf[at + PREFIX..at + PREFIX + hlen].copy_from_slice(&hbuf[..hlen]);
                ring.buf[at + PREFIX + hlen..at + total].copy_from_slice(payload);
                ring.head = at + total;
                ring.count += 1;
                self.depth.set(ring.count as i64);
            }
        }
        let lost = out.dropped as u64 + u64::from(out.refused);
        if lost > 0 {
            self.dropped.inc_by(lost);
        }
        self.inner.1.notify(1);
        out
    }

    /// Takes the oldest record, copying its payload into `out` (cleared first).
    pub fn try_pop(&self, out: &mut Vec<u8>) -> Option<RecordHeader> {
        let mut ring = self.ring();
        loop {
            let (h, p) = ring.take_oldest()?;
            self.depth.set(ring.count as i64);
            // Headers were encoded by `push`; a decode failure would be a bug, skip the record.
            if let Ok(header) = postcard::from_bytes::<RecordHeader>(&ring.buf[h]) {
                out.clear();
                out.extend_from_slice(&ring.buf[p]);
                return Some(header);
            }
        }
    }

    /// Waits for the oldest record; `None` once the spool is closed and empty.
    pub async fn pop(&self, out: &mut Vec<u8>) -> Option<RecordHeader> {
        loop {
            if let Some(h) = self.try_pop(out) {
                return Some(h);
            }
            let listener = self.inner.1.listen();
            if let Some(h) = self.try_pop(out) {
                return Some(h);
            }
            if self.ring().closed {
                return None;
            }
            listener.await;
        }
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.ring().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes the reader for good once the spool drains.
    pub fn close(&self) {
        self.ring().closed = true;
        self.inner.1.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> RecordHeader {
        RecordHeader {
            exchange: Exchange::Binance,
            market: Market::Spot,
            symbol: Symbol::parse("BTC-USDT").expect("a valid symbol"),
            channel: Channel::Trade,
            seq,
            id: MsgId::new(),
        }
    }

    /// Bytes one test record of 10 payload bytes takes (seq < 128).
    fn rec() -> usize {
        10 + PREFIX
            + postcard::to_allocvec(&header(0))
                .expect("encodes with postcard")
                .len()
    }

    fn spool(bytes: usize) -> Spool {
        Spool::new(bytes, Counter::default(), Gauge::default())
    }

    #[test]
    fn records_come_out_in_order_with_their_payloads() {
        let s = spool(10 * rec());
        for i in 0..5u8 {
            assert_eq!(s.push(&header(u64::from(i)), &[i; 10]).dropped, 0);
        }
        let mut out = Vec::new();
        for i in 0..5u8 {
            assert_eq!(
                s.try_pop(&mut out).expect("a queued message").seq,
                u64::from(i)
            );
            assert_eq!(out, [i; 10]);
        }
        assert!(s.try_pop(&mut out).is_none());
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let s = spool(10 * rec());
        for i in 0..10u64 {
            s.push(&header(i), &[1; 10]);
        }
        // TC0: 11th record of 10 bytes: exactly one old record goes.
        assert_eq!(s.push(&header(10), &[2; 10]).dropped, 1);
        assert_eq!(s.dropped.get(), 1);
        let mut out = Vec::new();
        assert_eq!(s.try_pop(&mut out).expect("a queued message").seq, 1);
        // TC1: a record larger than the spool is refused and counted.
        assert!(s.push(&header(11), &vec![0; 10 * rec()]).refused);
        assert_eq!(s.dropped.get(), 2);
    }

    #[test]
    fn wrapping_keeps_payloads_intact() {
        let s = spool(4 * rec());
        let mut out = Vec::new();
        let mut next_pop = 0u64;
        for i in 0..200u64 {
            let len = 5 + (i as usize * 7) % 20;
            let r = s.push(&header(i), &vec![i as u8; len]);
            next_pop += r.dropped as u64;
            if i % 3 == 0 {
                let h = s.try_pop(&mut out).expect("a queued message");
                assert_eq!(h.seq, next_pop);
                assert!(
                    out.iter().all(|b| *b == h.seq as u8),
                    "record {} corrupted",
                    h.seq
                );
                next_pop += 1;
            }
        }
    }

    #[test]
    fn pop_waits_for_a_push_and_ends_after_close() {
        let s = spool(64);
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            let first = smol::block_on(s2.pop(&mut out)).map(|h| h.seq);
            let second = smol::block_on(s2.pop(&mut out)).map(|h| h.seq);
            (first, second)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.push(&header(7), b"x");
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.close();
        assert_eq!(
            t.join().expect("the thread finished without panicking"),
            (Some(7), None)
        );
    }
}
