//! The bounded spool between sessions and the upstream (DESIGN rule 5).
//!
//! Design: one byte ring of `[spool] ram_bytes`, allocated at start but touched lazily (the
//! kernel backs a page when it is first written; an empty ring starts again at its front).
//! Only the front [`RESIDENT_FRONT`] bytes stay resident once read: past them, the pages the
//! reader has left behind go back to the kernel a [`RELEASE_CHUNK`] at a time. A reader that
//! keeps up but never quite empties the ring would otherwise leave every page the head ever
//! passed resident (under a 240 MB/s firehose, 13 MB where a few hundred KB were waiting).
//! Every record gets a spool
//! sequence number (`sseq`, one counter for the whole spool, never reused within a process;
//! the on-disk spool continues it across restarts) and is laid out as a fixed prefix, the
//! stream header (stream names, per-stream `seq`, message id, local timestamp) and the encoded
//! message. Pushing never allocates and never blocks a session: when the ring is full the
//! *oldest* records are dropped until the new one fits, and every drop is counted per channel
//! (`marketbox_spool_dropped_total{channel}`). A record larger than the whole ring is refused
//! and counted the same way. No channel is treated differently: books are not conflated, so
//! a consumer's gaps in `seq` are exactly the drops.
//!
//! With `[spool] dir` the ring is only the staging area in front of the on-disk log
//! ([`super::disk`]): a writer thread moves records from the ring into append-only segments
//! (fdatasync per batch) and the upstream reads them back from disk, so a record survives a
//! crash once its batch is synced. The upstream sees one API either way:
//!
//! ```text
//! sessions ─push─▶ RAM ring ─────────────────────────────▶ pop_batch ─▶ upstream window
//!                      └─(dir set) writer ─▶ disk segments ─┘        ack_through ◀─┘
//! ```
//!
//! A record leaves the spool's custody when the upstream takes it into its in-flight window
//! (RAM), and the on-disk log forgets it only when [`Spool::ack_through`] says the broker
//! acknowledged it. The window itself is bounded by the upstream, so drops here are the only
//! loss and they are counted where they happen.
//!
//! Owns: record framing, sequence numbers, the drop-oldest policy and its counters. Must not
//! touch: encodings or sockets.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use event_listener::{Event, Listener};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use super::disk::{Disk, DiskError};
use crate::metrics::{Metrics, SpoolChannelLabels, SpoolTierLabels};
use crate::model::{Channel, Exchange, Market, MsgId, Symbol};

/// What the upstream needs besides the payload: the subject parts, the de-duplication id and
/// when the message was stamped (for the frame-to-ack latency).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordHeader {
    pub exchange: Exchange,
    pub market: Market,
    pub symbol: Symbol,
    pub channel: Channel,
    pub seq: u64,
    pub id: MsgId,
    pub ts_local_ns: u64,
}

/// One record as the upstream takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The spool sequence number (acknowledge with [`Spool::ack_through`]).
    pub sseq: u64,
    pub header: RecordHeader,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// Largest encoded header (postcard of `RecordHeader`).
pub(crate) const HEADER_MAX: usize = 180;
/// A length word of this value means "the rest of the buffer is unused, continue at 0".
const WRAP: u32 = u32::MAX;
/// `[u32 total][u64 sseq]` before the body.
const PREFIX: usize = 4 + 8;
/// The front of the ring whose pages stay resident once written: a steady stream starts
/// again here whenever it empties the ring.
pub(crate) const RESIDENT_FRONT: usize = 2 << 20;
/// Pages behind the reader past the resident front go back to the kernel this many bytes at
/// a time (one `madvise` per chunk read).
pub(crate) const RELEASE_CHUNK: usize = 256 << 10;
/// Backpressure: past this many bytes waiting in the ring, a push says the spool is
/// [`Pushed::backlogged`] and the sessions pause reading (at most a [`Spool::wait_for_room`]'s
/// limit) until the upstream has taken the ring down to [`BACKLOG_LOW`]. A reader that is
/// briefly behind (a scheduling hiccup, a pipe reader that stalls for 50 ms) then leaves the
/// venues' bytes in the sockets' kernel buffers, where TCP's window already holds them, instead
/// of in ring pages made resident for them (under the firehose: 12 MB at once). One that stays
/// behind, or an upstream that is down, costs one pause: the wait is given up, the ring takes
/// the backlog as it always did (RAM, then disk, then dropping the oldest), and no session
/// pauses again until the ring is back under [`BACKLOG_LOW`]. A ring smaller than 4 MiB
/// uses a quarter of its size and a sixteenth instead ([`Ring::backlog_high`]), so a small
/// spool holds a brief stall back before it drops anything.
pub(crate) const BACKLOG_HIGH: usize = 1 << 20;
/// See [`BACKLOG_HIGH`].
pub(crate) const BACKLOG_LOW: usize = 256 << 10;
/// The body (what the disk log stores as a record's payload): `[u8 channel][u16 header
/// len][header][message]`.
pub(crate) const BODY_PREFIX: usize = 1 + 2;

/// The index of a channel in per-channel arrays (and its byte in record bodies).
pub(crate) fn channel_index(c: Channel) -> usize {
    Channel::ALL.iter().position(|x| *x == c).unwrap_or(0)
}

/// Splits a record body into (channel index, header bytes, message bytes); `None` when the
/// body is not one this module wrote.
pub(crate) fn split_body(body: &[u8]) -> Option<(usize, &[u8], &[u8])> {
    let (&ch, rest) = body.split_first()?;
    if usize::from(ch) >= Channel::ALL.len() || rest.len() < 2 {
        return None;
    }
    let hlen = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    let rest = &rest[2..];
    if hlen == 0 || hlen > rest.len() {
        return None;
    }
    let (h, p) = rest.split_at(hlen);
    Some((usize::from(ch), h, p))
}

/// Records laid out `[u32 total][u64 sseq][body]` from `tail` to `head`, wrapping at the end
/// of `buf`.
struct Ring {
    buf: Box<[u8]>,
    head: usize,
    tail: usize,
    count: usize,
    bytes: usize,
    /// The sequence number the next pushed record gets.
    next_sseq: u64,
    closed: bool,
    /// Paging: the front kept resident, the release step, the page size, how far past
    /// the front the reader's lap has given pages back, and the highest offset written since
    /// the pages past the front were last all given back.
    front: usize,
    chunk: usize,
    page: usize,
    released: usize,
    written_hi: usize,
}

impl Ring {
    fn cap(&self) -> usize {
        self.buf.len()
    }

    /// Bytes waiting past which producers are told to wait for room: [`BACKLOG_HIGH`], or a
    /// quarter of a smaller ring.
    fn backlog_high(&self) -> usize {
        BACKLOG_HIGH.min(self.cap() / 4)
    }

    /// Bytes waiting at or below which there is room again: [`BACKLOG_LOW`], or a sixteenth
    /// of a smaller ring.
    fn backlog_low(&self) -> usize {
        BACKLOG_LOW.min(self.cap() / 16)
    }

    fn wrapped(&self) -> bool {
        self.head < self.tail || (self.head == self.tail && self.count > 0)
    }

    /// Where a record of `n` bytes can go now, writing a wrap marker if needed. The ring
    /// wraps only when the end has no room: wrapping earlier would leave the end unusable
    /// until the reader passes it, and a burst would then drop records with the ring nearly
    /// empty (`a_burst_that_fits_is_never_dropped_whatever_came_before`).
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

    /// Removes the oldest record, returning its sequence number and body byte range (still
    /// readable: pages are given back only behind it).
    fn take_oldest(&mut self) -> Option<(u64, std::ops::Range<usize>)> {
        if self.count == 0 {
            return None;
        }
        let at = self.tail;
        let total = self.word(at) as usize;
        let mut s = [0u8; 8];
        s.copy_from_slice(&self.buf[at + 4..at + PREFIX]);
        self.tail = at + total;
        self.count -= 1;
        self.bytes -= total;
        self.normalize_tail();
        self.trim(at);
        Some((u64::from_le_bytes(s), at + PREFIX..at + total))
    }

    /// Gives back the pages past the resident front that no record occupies and the writer
    /// will not reach before the reader has passed them, after the reader moved from `was`.
    /// Never touches `was..` (the record just taken is still read by the caller).
    fn trim(&mut self, was: usize) {
        if self.cap() <= self.front {
            return;
        }
        if self.count == 0 {
            // Empty: the next record goes to the front; nothing past it is needed.
            let from = self.front.max(self.released);
            self.release(from, self.written_hi.min(was));
            self.released = self.front;
            self.written_hi = 0;
        } else if self.tail < was {
            // The reader went round to the front: the rest of its last lap, past what the
            // writer has written since it went round, is free.
            let from = self.front.max(self.head);
            self.release(from, self.written_hi.min(was));
            self.released = self.front;
            self.written_hi = self.head;
        } else if !self.wrapped() {
            // Same lap, the writer ahead: everything behind the reader is free.
            let upto = was / self.chunk * self.chunk;
            let from = self.front.max(self.released);
            if upto > from {
                self.released = self.release(from, upto);
            }
        }
    }

    /// Gives the whole pages inside `buf[from..to]` back to the kernel; returns the offset
    /// up to which they now are given back (`to` rounded down to a page: the next release
    /// starts at that page, so no page between two releases is left behind).
    fn release(&mut self, from: usize, to: usize) -> usize {
        if to <= from || to > self.buf.len() || self.page == 0 {
            return from;
        }
        let base = self.buf.as_mut_ptr() as usize;
        let start = (base + from).next_multiple_of(self.page);
        let end = (base + to) / self.page * self.page;
        if end <= start {
            return from;
        }
        // SAFETY: `start..end` lies inside `buf`, which this ring owns and holds by `&mut
        // self`. MADV_DONTNEED on private anonymous memory only makes those bytes read as
        // zeros again; the ring reads no byte there before writing it anew. A failure leaves
        // the pages resident, which is harmless.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
        end - base
    }

    /// Resident bytes of the buffer (`mincore`), for tests and benches.
    #[cfg(test)]
    fn resident(&self) -> usize {
        let base = self.buf.as_ptr() as usize;
        let start = base.next_multiple_of(self.page);
        let end = (base + self.buf.len()) / self.page * self.page;
        let pages = (end - start) / self.page;
        let mut v = vec![0u8; pages];
        // SAFETY: `start..end` is mapped (inside `buf`) and `v` has a byte per page.
        let r = unsafe { libc::mincore(start as *mut libc::c_void, end - start, v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        v.iter().filter(|b| *b & 1 == 1).count() * self.page
    }
}

/// Outcome of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Older records dropped to make room.
    pub dropped: usize,
    /// The record itself was refused (larger than the whole spool, or the spool is closed).
    pub refused: bool,
    /// The ring was empty before this record: its reader may be waiting. [`Spool::push`] has
    /// woken it; after [`Spool::push_deferred`] the caller owes a [`Spool::wake`].
    pub wake: bool,
    /// The ring is more than half full with this record: a wake-up held back should be given
    /// now, before the next records push the oldest out.
    pub crowded: bool,
    /// More than [`BACKLOG_HIGH`] bytes (a quarter of a smaller ring) wait in the ring and no
    /// wait for room was given up since it was last under [`BACKLOG_LOW`] (a sixteenth): the
    /// producer should [`Spool::wait_for_room`]
    /// before it reads more.
    pub backlogged: bool,
}

/// How a [`Spool::wait_for_room`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// The ring was (or got) down to [`BACKLOG_LOW`].
    Drained,
    /// The limit passed first: the ring takes the backlog, and nobody waits again until it is
    /// under [`BACKLOG_LOW`].
    GaveUp,
    /// An earlier wait was given up and the ring has not drained since: no wait.
    Overflowing,
}

/// The spool's metric handles, resolved once.
#[derive(Clone, Default)]
pub struct SpoolMetrics {
    /// Dropped records per channel, indexed like `Channel::ALL`.
    pub dropped: [Counter; 7],
    pub ram_depth: Gauge,
    pub ram_bytes: Gauge,
    pub disk_depth: Gauge,
    pub disk_bytes: Gauge,
    pub disk_errors: Counter,
    /// Seconds sessions spent in [`Spool::wait_for_room`].
    pub paused_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl SpoolMetrics {
    pub fn new(m: &Metrics) -> Self {
        let tier =
            |f: &prometheus_client::metrics::family::Family<SpoolTierLabels, Gauge>,
             tier: &'static str| f.get_or_create(&SpoolTierLabels { tier }).clone();
        SpoolMetrics {
            dropped: Channel::ALL.map(|channel| {
                m.spool_dropped
                    .get_or_create(&SpoolChannelLabels { channel })
                    .clone()
            }),
            ram_depth: tier(&m.spool_depth, "ram"),
            ram_bytes: tier(&m.spool_bytes, "ram"),
            disk_depth: tier(&m.spool_depth, "disk"),
            disk_bytes: tier(&m.spool_bytes, "disk"),
            disk_errors: m.spool_disk_errors.clone(),
            paused_seconds: m.spool_backpressure_seconds.clone(),
        }
    }

    /// Total dropped over every channel.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Counter::get).sum()
    }
}

pub(crate) struct Inner {
    ring: Mutex<Ring>,
    /// Notified on every push and on close.
    pushed: Event,
    /// Notified when a take leaves at most [`BACKLOG_LOW`] bytes in the ring.
    room: Event,
    /// A wait for room was given up and the ring has not been under [`BACKLOG_LOW`] since.
    overflowing: AtomicBool,
    pub(crate) metrics: SpoolMetrics,
    disk: Option<Arc<Disk>>,
}

impl Inner {
    fn ring(&self) -> MutexGuard<'_, Ring> {
        // A poisoned lock only means a panic elsewhere; the ring's invariants hold between calls.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves up to `max` records (and at most `max_bytes` of bodies, but always one) from the
    /// ring to `out` as `(sseq, body)`; the caller owns the bytes from then on.
    pub(crate) fn take_bodies(
        &self,
        max: usize,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> usize {
        let mut ring = self.ring();
        let mut n = 0;
        let mut bytes = 0;
        while n < max {
            if n > 0 && ring.count > 0 {
                let next = ring.word(ring.tail) as usize;
                if bytes + next > max_bytes {
                    break;
                }
            }
            let Some((sseq, body)) = ring.take_oldest() else {
                break;
            };
            bytes += body.len();
            out.push((sseq, ring.buf[body].to_vec()));
            n += 1;
        }
        self.taken(&ring);
        n
    }

    /// Waits (blocking the thread) until the ring has a record or is closed; `false` when
    /// closed and empty.
    pub(crate) fn wait_blocking(&self) -> bool {
        loop {
            {
                let ring = self.ring();
                if ring.count > 0 {
                    return true;
                }
                if ring.closed {
                    return false;
                }
            }
            let listener = self.pushed.listen();
            {
                let ring = self.ring();
                if ring.count > 0 {
                    return true;
                }
                if ring.closed {
                    return false;
                }
            }
            listener.wait();
        }
    }

    /// After records were taken from `ring`: the gauges, and room for producers waiting on a
    /// backlog once it is down to [`BACKLOG_LOW`].
    fn taken(&self, ring: &Ring) {
        self.metrics.ram_depth.set(ring.count as i64);
        self.metrics.ram_bytes.set(ring.bytes as i64);
        if ring.bytes <= ring.backlog_low() {
            if self.overflowing.load(Ordering::Relaxed) {
                self.overflowing.store(false, Ordering::Relaxed);
            }
            self.room.notify(usize::MAX);
        }
    }

    /// Counts one dropped record of the channel with index `ch`.
    pub(crate) fn count_drop(&self, ch: usize) {
        if let Some(c) = self.metrics.dropped.get(ch) {
            c.inc();
        }
    }
}

/// The spool handle; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// The spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(transparent)]
    Disk(#[from] DiskError),
}

impl Spool {
    /// A RAM spool of `bytes`, reporting into `metrics`.
    pub fn new(bytes: usize, metrics: SpoolMetrics) -> Self {
        Self::build(bytes, metrics, None, 1)
    }

    /// A spool from the config: RAM only, or with `dir` the on-disk log behind a RAM staging
    /// ring (its writer thread starts here). `disk_bytes` bounds the log.
    pub fn open(
        ram_bytes: usize,
        dir: Option<&Path>,
        disk_bytes: u64,
        metrics: SpoolMetrics,
    ) -> Result<Self, SpoolError> {
        let Some(dir) = dir else {
            return Ok(Self::new(ram_bytes, metrics));
        };
        let disk = Arc::new(Disk::open(dir, disk_bytes, ram_bytes, metrics.clone())?);
        let next = disk.next_sseq();
        let spool = Self::build(ram_bytes, metrics, Some(disk.clone()), next);
        disk.start_writer(spool.inner.clone())?;
        Ok(spool)
    }

    fn build(bytes: usize, metrics: SpoolMetrics, disk: Option<Arc<Disk>>, next: u64) -> Self {
        // SAFETY: sysconf has no preconditions; a failure (-1) turns page release off.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        let ring = Ring {
            buf: vec![0u8; bytes].into_boxed_slice(),
            head: 0,
            tail: 0,
            count: 0,
            bytes: 0,
            next_sseq: next.max(1),
            closed: false,
            front: RESIDENT_FRONT,
            chunk: RELEASE_CHUNK,
            page,
            released: RESIDENT_FRONT,
            written_hi: 0,
        };
        Spool {
            inner: Arc::new(Inner {
                ring: Mutex::new(ring),
                pushed: Event::new(),
                room: Event::new(),
                overflowing: AtomicBool::new(false),
                metrics,
                disk,
            }),
        }
    }

    pub fn metrics(&self) -> &SpoolMetrics {
        &self.inner.metrics
    }

    /// Whether records go through the on-disk log.
    pub fn is_disk(&self) -> bool {
        self.inner.disk.is_some()
    }

    /// Appends a record, dropping the oldest ones if needed, and wakes the reader if it may be
    /// waiting. Never blocks on I/O, never allocates.
    pub fn push(&self, header: &RecordHeader, payload: &[u8]) -> Pushed {
        let out = self.push_deferred(header, payload);
        if out.wake {
            self.wake();
        }
        out
    }

    /// Wakes the reader (and the disk writer) if they wait for a record.
    pub fn wake(&self) {
        self.inner.pushed.notify(usize::MAX);
    }

    /// [`Spool::push`] without the wake-up: a producer that pushes many records in a row
    /// (a session reading a burst of frames) wakes the reader once, with [`Spool::wake`],
    /// when [`Pushed::wake`] said it was owed and before it waits for anything itself. The
    /// reader only ever waits on an empty ring, so only the push that found the ring empty
    /// owes the wake; the records after it are taken in the same wake-up.
    pub fn push_deferred(&self, header: &RecordHeader, payload: &[u8]) -> Pushed {
        let mut out = Pushed {
            dropped: 0,
            refused: false,
            wake: false,
            crowded: false,
            backlogged: false,
        };
        let mut hbuf = [0u8; HEADER_MAX];
        let hlen = match postcard::to_slice(header, &mut hbuf) {
            Ok(h) => h.len(),
            Err(_) => 0,
        };
        let ch = channel_index(header.channel);
        let total = PREFIX + BODY_PREFIX + hlen + payload.len();
        {
            let mut ring = self.inner.ring();
            // After `close` the reader may already have ended: a late record would be stranded,
            // so it is refused and counted like any other loss.
            if hlen == 0
                || payload.is_empty()
                || total > ring.cap()
                || total >= WRAP as usize
                || ring.closed
            {
                out.refused = true;
                self.inner.count_drop(ch);
            } else {
                out.wake = ring.count == 0;
                let at = loop {
                    if let Some(at) = ring.place(total) {
                        break at;
                    }
                    if let Some((_, body)) = ring.take_oldest() {
                        let old = ring.buf.get(body.start).copied().unwrap_or(0);
                        self.inner.count_drop(usize::from(old));
                    }
                    out.dropped += 1;
                };
                let sseq = ring.next_sseq;
                ring.next_sseq += 1;
                let b = &mut ring.buf[at..at + total];
                b[..4].copy_from_slice(&(total as u32).to_le_bytes());
                b[4..12].copy_from_slice(&sseq.to_le_bytes());
                b[12] = ch as u8;
                b[13..15].copy_from_slice(&(hlen as u16).to_le_bytes());
                b[15..15 + hlen].copy_from_slice(&hbuf[..hlen]);
                b[15 + hlen..].copy_from_slice(payload);
                ring.head = at + total;
                ring.written_hi = ring.written_hi.max(ring.head);
                ring.count += 1;
                ring.bytes += total;
                out.crowded = ring.bytes > ring.cap() / 2;
                out.backlogged = ring.bytes > ring.backlog_high()
                    && !self.inner.overflowing.load(Ordering::Relaxed);
                self.inner.metrics.ram_depth.set(ring.count as i64);
                self.inner.metrics.ram_bytes.set(ring.bytes as i64);
            }
        }
        out
    }

    /// Takes the oldest record without waiting, copying its message into `out` (cleared
    /// first).
    pub fn try_pop(&self, out: &mut Vec<u8>) -> Option<RecordHeader> {
        self.try_take(out).map(|(_, h)| h)
    }

    /// Takes the oldest record: `(sseq, header)`, the message copied into `out`.
    pub(crate) fn try_take(&self, out: &mut Vec<u8>) -> Option<(u64, RecordHeader)> {
        if let Some(disk) = &self.inner.disk {
            return disk.take(out);
        }
        let mut ring = self.inner.ring();
        loop {
            let (sseq, body) = ring.take_oldest()?;
            self.inner.taken(&ring);
            // Bodies were written by `push`; one that does not decode would be a bug: skip it.
            if let Some((_, h, p)) = split_body(&ring.buf[body])
                && let Ok(header) = postcard::from_bytes::<RecordHeader>(h)
            {
                out.clear();
                out.extend_from_slice(p);
                return Some((sseq, header));
            }
        }
    }

    /// Whether nothing more will come: closed, and (for the disk log) the writer is done.
    fn finished(&self) -> bool {
        let closed = self.inner.ring().closed;
        match &self.inner.disk {
            None => closed,
            Some(d) => closed && d.writer_done(),
        }
    }

    fn listen(&self) -> event_listener::EventListener {
        match &self.inner.disk {
            None => self.inner.pushed.listen(),
            Some(d) => d.listen(),
        }
    }

    /// Waits for the oldest record; `None` once the spool is closed and empty.
    pub async fn pop(&self, out: &mut Vec<u8>) -> Option<RecordHeader> {
        self.pop_with_sseq(out).await.map(|(_, h)| h)
    }

    /// [`Spool::pop`] with the record's sequence number.
    pub async fn pop_with_sseq(&self, out: &mut Vec<u8>) -> Option<(u64, RecordHeader)> {
        self.wait_for(|| self.try_take(out)).await
    }

    /// Runs `take` until it finds something, waiting for pushes in between; `None` once the
    /// spool is closed and `take` found nothing after the last push.
    async fn wait_for<T>(&self, mut take: impl FnMut() -> Option<T>) -> Option<T> {
        loop {
            if let Some(r) = take() {
                return Some(r);
            }
            let listener = self.listen();
            if let Some(r) = take() {
                return Some(r);
            }
            if self.finished() {
                return take();
            }
            listener.await;
        }
    }

    /// Waits for records, then appends the messages of as many as there are to `out`, each
    /// written by `frame` (at least one record; no more once `out` would pass `max_bytes`).
    /// Returns the sequence number of the last one taken, for [`Spool::ack_through`]; `None`
    /// once the spool is closed and drained. The batch form for a writer that needs only the
    /// messages (stdout): one lock and one wake-up for the whole batch, headers not decoded.
    pub async fn pop_messages(
        &self,
        max_bytes: usize,
        out: &mut Vec<u8>,
        frame: fn(&mut Vec<u8>, &[u8]),
    ) -> Option<u64> {
        let mut scratch = Vec::new();
        self.wait_for(|| self.take_messages(max_bytes, out, frame, &mut scratch))
            .await
    }

    fn take_messages(
        &self,
        max_bytes: usize,
        out: &mut Vec<u8>,
        frame: fn(&mut Vec<u8>, &[u8]),
        scratch: &mut Vec<u8>,
    ) -> Option<u64> {
        let mut last = None;
        if let Some(disk) = &self.inner.disk {
            while last.is_none() || out.len() < max_bytes {
                let Some((sseq, _)) = disk.take(scratch) else {
                    break;
                };
                frame(out, scratch);
                last = Some(sseq);
            }
            return last;
        }
        let mut ring = self.inner.ring();
        while ring.count > 0 {
            let next = ring.word(ring.tail) as usize;
            if last.is_some() && out.len() + next > max_bytes {
                break;
            }
            let Some((sseq, body)) = ring.take_oldest() else {
                break;
            };
            // Bodies were written by `push`; one that does not split would be a bug: skip it.
            if let Some((_, _, p)) = split_body(&ring.buf[body]) {
                frame(out, p);
                last = Some(sseq);
            }
        }
        self.inner.taken(&ring);
        last
    }

    /// Moves up to `max` records into `out`, waiting for the first; `false` once the spool is
    /// closed and drained. The batch form of [`Spool::pop`], for writers that take many
    /// records per wake-up.
    pub async fn pop_batch(&self, max: usize, out: &mut VecDeque<Record>) -> bool {
        let mut buf = Vec::new();
        let Some((sseq, header)) = self.pop_with_sseq(&mut buf).await else {
            return false;
        };
        out.push_back(Record {
            sseq,
            header,
            payload: buf,
        });
        for _ in 1..max {
            let mut buf = Vec::new();
            let Some((sseq, header)) = self.try_take(&mut buf) else {
                break;
            };
            out.push_back(Record {
                sseq,
                header,
                payload: buf,
            });
        }
        true
    }

    /// Every record up to and including `sseq` was acknowledged by the upstream: the on-disk
    /// log may forget them (the cursor is saved atomically, at most every few hundred ms).
    pub fn ack_through(&self, sseq: u64) {
        if let Some(d) = &self.inner.disk {
            d.ack_through(sseq);
        }
    }

    /// Waits until the ring holds at most [`BACKLOG_LOW`] bytes, at most `limit` (see
    /// [`BACKLOG_HIGH`]). A closed spool never waits.
    pub async fn wait_for_room(&self, limit: Duration) -> Room {
        if self.inner.overflowing.load(Ordering::Relaxed) {
            return Room::Overflowing;
        }
        let started = std::time::Instant::now();
        let drained = async {
            loop {
                if self.has_room() {
                    return Room::Drained;
                }
                let listener = self.inner.room.listen();
                if self.has_room() {
                    return Room::Drained;
                }
                listener.await;
            }
        };
        let out = futures_lite::future::or(drained, async {
            smol::Timer::after(limit).await;
            Room::GaveUp
        })
        .await;
        if out == Room::GaveUp {
            self.inner.overflowing.store(true, Ordering::Relaxed);
        }
        self.inner
            .metrics
            .paused_seconds
            .inc_by(started.elapsed().as_secs_f64());
        out
    }

    fn has_room(&self) -> bool {
        let ring = self.inner.ring();
        ring.bytes <= ring.backlog_low() || ring.closed
    }

    /// Records waiting (RAM ring plus unread on-disk records).
    pub fn len(&self) -> usize {
        let ram = self.inner.ring().count;
        ram + self.inner.disk.as_ref().map_or(0, |d| d.unread())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records waiting in the RAM ring alone.
    pub fn ram_len(&self) -> usize {
        self.inner.ring().count
    }

    /// No more pushes will come: the reader drains what is left and then ends. With the disk
    /// log, the writer flushes the ring to disk first and the acknowledged cursor is saved.
    pub fn close(&self) {
        self.inner.ring().closed = true;
        self.inner.pushed.notify(usize::MAX);
        self.inner.room.notify(usize::MAX);
        if let Some(d) = &self.inner.disk {
            d.notify_all();
        }
    }

    /// Waits (blocking) until the disk writer has flushed everything pushed before `close`
    /// and saves the acknowledged cursor. Immediate for a RAM spool.
    pub fn shutdown(&self) {
        self.close();
        if let Some(d) = &self.inner.disk {
            d.shutdown();
        }
    }

    /// Resolves once the spool is closed.
    pub async fn closed(&self) {
        loop {
            let listener = self.inner.pushed.listen();
            if self.inner.ring().closed {
                return;
            }
            listener.await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.ring().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_ch(seq: u64, channel: Channel) -> RecordHeader {
        RecordHeader {
            exchange: Exchange::Binance,
            market: Market::Spot,
            symbol: Symbol::parse("BTC-USDT").expect("a valid symbol"),
            channel,
            seq,
            id: MsgId::new(),
            ts_local_ns: 0,
        }
    }

    fn header(seq: u64) -> RecordHeader {
        header_ch(seq, Channel::Trade)
    }

    /// Bytes one test record of 10 payload bytes takes (seq < 128).
    fn rec() -> usize {
        10 + PREFIX
            + BODY_PREFIX
            + postcard::to_allocvec(&header(0))
                .expect("encodes with postcard")
                .len()
    }

    fn spool(bytes: usize) -> Spool {
        Spool::new(bytes, SpoolMetrics::default())
    }

    #[test]
    fn the_largest_header_fits_its_buffer() {
        let mut h = header_ch(u64::MAX, Channel::LsrTopPosition);
        h.symbol = Symbol::parse("ABCDEFGHIJKLMNOPQRSTU-XY").expect("24 characters");
        h.ts_local_ns = u64::MAX;
        while h.id.push('x').is_ok() {}
        let n = postcard::to_allocvec(&h).expect("encodes").len();
        assert!(n <= HEADER_MAX, "{n} > {HEADER_MAX}");
    }

    #[test]
    fn records_come_out_in_order_with_their_payloads_and_sequence_numbers() {
        let s = spool(10 * rec());
        for i in 0..5u8 {
            assert_eq!(s.push(&header(u64::from(i)), &[i; 10]).dropped, 0);
        }
        let mut out = Vec::new();
        for i in 0..5u8 {
            let (sseq, h) = s.try_take(&mut out).expect("a queued message");
            assert_eq!((sseq, h.seq), (u64::from(i) + 1, u64::from(i)));
            assert_eq!(out, [i; 10]);
        }
        assert!(s.try_pop(&mut out).is_none());
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them_per_channel() {
        let s = spool(10 * rec());
        for i in 0..10u64 {
            let ch = if i == 0 {
                Channel::Orderbook
            } else {
                Channel::Trade
            };
            s.push(&header_ch(i, ch), &[1; 10]);
        }
        // TC0: 11th record of 10 bytes: exactly one old record goes, counted on its channel.
        assert_eq!(s.push(&header(10), &[2; 10]).dropped, 1);
        let m = s.metrics();
        assert_eq!(m.dropped[channel_index(Channel::Orderbook)].get(), 1);
        assert_eq!(m.dropped_total(), 1);
        let mut out = Vec::new();
        assert_eq!(s.try_pop(&mut out).expect("a queued message").seq, 1);
        // TC1: a record larger than the spool is refused and counted on its own channel.
        assert!(s.push(&header(11), &vec![0; 10 * rec()]).refused);
        assert_eq!(m.dropped[channel_index(Channel::Trade)].get(), 1);
        assert_eq!(m.dropped_total(), 2);
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
        assert_eq!(s.metrics().dropped_total(), next_pop - 67);
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

    #[test]
    fn a_push_after_close_is_refused_and_counted() {
        let s = spool(10 * rec());
        s.push(&header(1), &[1; 10]);
        s.close();
        assert!(s.push(&header(2), &[1; 10]).refused);
        assert_eq!(s.metrics().dropped_total(), 1);
        let mut out = Vec::new();
        assert_eq!(s.try_pop(&mut out).map(|h| h.seq), Some(1));
        assert!(s.try_pop(&mut out).is_none());
    }

    #[test]
    fn random_pushes_and_pops_lose_nothing_but_what_was_dropped() {
        // Against a model queue: every record pushed and not reported dropped comes out once,
        // in order, whatever the sizes, the reader's lag and the ring's wraps.
        let mut rng = fastrand::Rng::with_seed(5);
        for round in 0..200 {
            let s = spool(rng.usize(256..4096));
            let mut model = std::collections::VecDeque::new();
            let mut out = Vec::new();
            for i in 0..2_000u64 {
                if rng.u8(..100) < 55 {
                    let payload = vec![(i % 251) as u8; rng.usize(0..200)];
                    let pushed = s.push(&header(i), &payload);
                    if !pushed.refused {
                        model.push_back((i, payload));
                    }
                    for _ in 0..pushed.dropped {
                        model.pop_front();
                    }
                } else {
                    let got = s.try_pop(&mut out).map(|h| (h.seq, out.clone()));
                    assert_eq!(got, model.pop_front(), "round {round}, step {i}");
                }
            }
        }
    }

    #[test]
    fn a_reader_that_never_quite_catches_up_keeps_only_the_front_of_the_ring_resident() {
        // Always a record or two behind: the ring never empties and its head walks 40 MB
        // through a 64 MiB ring. Every record comes out intact, and past the resident front
        // only the pages near the reader stay resident (without giving pages back: 40 MB).
        let s = spool(64 << 20);
        let mut out = Vec::new();
        let payload =
            |i: u64| -> Vec<u8> { (0..1000).map(|j| ((i * 31 + j) % 251) as u8).collect() };
        s.push(&header(0), &payload(0));
        for i in 1..40_000u64 {
            assert_eq!(s.push(&header(i), &payload(i)).dropped, 0);
            if i % 3 != 0 {
                let h = s.try_pop(&mut out).expect("a record waits");
                assert_eq!(out, payload(h.seq), "record {}", h.seq);
            }
        }
        while let Some(h) = s.try_pop(&mut out) {
            assert_eq!(out, payload(h.seq), "record {}", h.seq);
        }
        let resident = s.inner.ring().resident();
        assert!(
            resident <= RESIDENT_FRONT + 2 * RELEASE_CHUNK,
            "{resident} bytes resident"
        );
    }

    #[test]
    fn pages_given_back_never_lose_a_record() {
        // A 1 MiB ring whose front is 64 KiB and which gives pages back 16 KiB at a time,
        // against a model queue: records of up to 6 KB filled with their own pattern, a
        // reader that lags by a varying number of records (so the ring wraps, fills, drops,
        // and empties now and then): every record not reported dropped comes out once, in
        // order, byte for byte.
        let mut rng = fastrand::Rng::with_seed(12);
        for round in 0..6 {
            let s = spool(1 << 20);
            {
                let mut ring = s.inner.ring();
                ring.front = 64 << 10;
                ring.chunk = 16 << 10;
                ring.released = ring.front;
            }
            let payload = |i: u64, n: usize| -> Vec<u8> {
                (0..n as u64).map(|j| ((i * 31 + j) % 251) as u8).collect()
            };
            let mut model = std::collections::VecDeque::new();
            let mut out = Vec::new();
            let mut lag = 0;
            for i in 0..30_000u64 {
                if i % 500 == 0 {
                    lag = rng.usize(0..300);
                }
                let p = payload(i, rng.usize(1..6000));
                let pushed = s.push(&header(i), &p);
                model.push_back((i, p));
                for _ in 0..pushed.dropped {
                    model.pop_front();
                }
                while model.len() > lag {
                    let got = s.try_pop(&mut out).map(|h| (h.seq, out.clone()));
                    assert_eq!(got, model.pop_front(), "round {round}, step {i}");
                }
            }
        }
    }

    #[test]
    fn a_burst_that_fits_is_never_dropped_whatever_came_before() {
        // A reader a few records behind for a while, then a burst of half the ring: the ring
        // has room for all of it, so nothing may be dropped (wherever the head happened to be).
        let s = spool(1 << 20);
        let mut out = Vec::new();
        for i in 0..3u64 {
            s.push(&header(i), &[1; 10]);
        }
        for i in 3..10_003u64 {
            assert_eq!(s.push(&header(i), &[1; 10]).dropped, 0);
            assert!(s.try_pop(&mut out).is_some());
        }
        let burst = (1 << 19) / rec();
        for i in 0..burst as u64 {
            assert_eq!(
                s.push(&header(i), &[1; 10]).dropped,
                0,
                "record {i} of the burst"
            );
        }
    }

    #[test]
    fn pop_batch_takes_what_is_there_up_to_max() {
        let s = spool(10 * rec());
        for i in 0..5u64 {
            s.push(&header(i), &[1; 10]);
        }
        let mut out = VecDeque::new();
        assert!(smol::block_on(s.pop_batch(3, &mut out)));
        assert_eq!(
            out.iter().map(|r| r.sseq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(smol::block_on(s.pop_batch(10, &mut out)));
        assert_eq!(out.len(), 5);
        s.close();
        assert!(!smol::block_on(s.pop_batch(10, &mut out)));
    }

    /// Pushes records of `size` bytes until a push says the spool is backlogged; returns how
    /// many.
    fn push_until_backlogged(s: &Spool, size: usize) -> usize {
        let body = vec![7u8; size];
        for n in 1..=64 {
            if s.push(&header(n as u64), &body).backlogged {
                return n;
            }
        }
        panic!("never backlogged");
    }

    #[test]
    fn a_backlog_makes_producers_wait_for_room_until_the_reader_takes_it_down() {
        let s = spool(8 << 20);
        // Backlogged only past BACKLOG_HIGH: the 17th 64 KiB record (plus headers) passes 1 MiB.
        assert_eq!(push_until_backlogged(&s, 64 << 10), 16);
        // A reader takes the ring down to BACKLOG_LOW: the waiting producer goes on.
        let reader = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut out = Vec::new();
            while reader.inner.ring().bytes > BACKLOG_LOW {
                reader.try_take(&mut out).expect("a record");
            }
        });
        let started = std::time::Instant::now();
        let room = smol::block_on(s.wait_for_room(Duration::from_secs(10)));
        assert_eq!(room, Room::Drained);
        assert!(started.elapsed() < Duration::from_secs(5));
        t.join().expect("the reader");
        assert!(s.inner.ring().bytes <= BACKLOG_LOW);
        assert!(s.metrics().paused_seconds.get() > 0.0);
        // Room at once while it is there.
        assert_eq!(
            smol::block_on(s.wait_for_room(Duration::from_secs(10))),
            Room::Drained
        );
        assert_eq!(s.metrics().dropped_total(), 0);
    }

    #[test]
    fn an_upstream_that_does_not_take_the_backlog_costs_one_pause_then_the_ring_takes_it() {
        let s = spool(8 << 20);
        push_until_backlogged(&s, 64 << 10);
        // Nobody reads: the wait is given up after its limit...
        let started = std::time::Instant::now();
        let room = smol::block_on(s.wait_for_room(Duration::from_millis(100)));
        assert_eq!(room, Room::GaveUp);
        assert!(started.elapsed() >= Duration::from_millis(100));
        // ...and nobody waits again, nor is told to, while the ring holds the backlog.
        let body = vec![7u8; 64 << 10];
        assert!(!s.push(&header(99), &body).backlogged);
        assert_eq!(
            smol::block_on(s.wait_for_room(Duration::from_secs(10))),
            Room::Overflowing
        );
        // Once the reader has taken it down to BACKLOG_LOW, a new backlog counts again.
        let mut out = Vec::new();
        while s.try_take(&mut out).is_some() {}
        assert_eq!(push_until_backlogged(&s, 64 << 10), 16);
        // A closed spool has room: a session stopping is never held.
        s.close();
        assert_eq!(
            smol::block_on(s.wait_for_room(Duration::from_secs(10))),
            Room::Drained
        );
    }

    #[test]
    fn a_small_ring_is_backlogged_at_a_quarter_of_its_size_before_it_drops_anything() {
        // 256 KiB: a quarter is 64 KiB, a sixteenth 16 KiB (not 1 MiB and 256 KiB, which
        // such a ring would reach only by dropping its oldest records).
        let s = spool(256 << 10);
        push_until_backlogged(&s, 4 << 10);
        assert_eq!(s.metrics().dropped_total(), 0);
        let bytes = s.inner.ring().bytes;
        assert!(bytes > 64 << 10 && bytes < 72 << 10, "{bytes}");
        let mut out = Vec::new();
        while s.inner.ring().bytes > 16 << 10 {
            s.try_take(&mut out).expect("a record");
        }
        assert_eq!(
            smol::block_on(s.wait_for_room(Duration::from_secs(10))),
            Room::Drained
        );
    }
}
