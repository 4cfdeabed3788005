//! The on-disk spool: append-only segments behind the RAM ring (`[spool] dir`).
//!
//! Design: a writer thread (`marketbox-spool`) takes batches from the RAM ring, appends them
//! to the current segment file and calls `fdatasync` once per batch; only then are the records
//! visible to the reader, so whatever the upstream sends has survived a crash. The upstream
//! reads the segments back in order and acknowledges with a sequence number; the highest
//! acknowledged number is saved atomically (`acked.tmp`, fsync, rename, fsync of the folder) at
//! most every [`ACK_SAVE_EVERY`] and at shutdown, and segments wholly acknowledged are
//! deleted. After a crash the log is replayed from the saved cursor: at most a few hundred ms
//! of acknowledged records are sent again, which the brokers' de-duplication (JetStream
//! `Nats-Msg-Id`) or the consumer (MQTT QoS 1, by `id`) absorbs.
//!
//! Files, in `[spool] dir`:
//! - `seg-<first sseq, 20 digits>.log`: records `[u32 len][u32 crc32][u64 sseq][body]`, the
//!   CRC over the sequence number and the body; the body is the RAM ring's
//!   (`[u8 channel][u16 header len][header][message]`).
//! - `acked`: `[u64 sseq][u32 crc32]`, the highest acknowledged sequence number.
//!
//! Opening scans every segment: a record that is short, too long or fails its CRC ends the
//! segment there (a torn tail from a crash mid-write) and the file is truncated to its last
//! whole record, said in the log with the byte count.
//!
//! Bounds: the segments never hold more than `[spool] disk_bytes`. Before a batch would pass
//! it, the oldest segment is deleted and its records the upstream had not yet read are counted
//! as dropped, per channel (the oldest go first, as in RAM).
//!
//! Disk failures (full, `EFBIG`, I/O errors): the segment is cut back to its last synced
//! length, the failure is counted (`marketbox_spool_disk_errors_total`) and logged once per
//! failure streak naming `[spool] dir`, and the batch goes on to the upstream from RAM (a
//! bypass queue bounded by `ram_bytes`, drop-oldest and counted) so collection and forwarding
//! continue; the disk is tried again every [`DISK_RETRY`]. The reader merges the bypass with
//! the log by sequence number, so order is kept.
//!
//! Owns: segment files, the acknowledged cursor, the bypass queue. Must not touch: sockets,
//! encodings.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::Event;

use super::spool::{Inner, RecordHeader, SpoolMetrics, split_body};

/// `[u32 len][u32 crc][u64 sseq]`.
const REC_HEAD: usize = 16;
/// Largest record body accepted when reading (a body is a header and one message).
const MAX_BODY: usize = 4 << 20;
/// How often the acknowledged cursor is saved while acknowledgements flow.
pub const ACK_SAVE_EVERY: Duration = Duration::from_millis(200);
/// How long the writer waits before trying a failed disk again.
pub const DISK_RETRY: Duration = Duration::from_secs(1);
/// Records per writer batch (one fdatasync each).
const BATCH_RECORDS: usize = 4096;

/// The on-disk spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "[spool] dir {}: {what}: {source} (check that the folder exists or can be created and \
         is writable, or remove [spool] dir to spool in RAM only)",
        dir.display()
    )]
    Io {
        dir: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

struct Segment {
    first: u64,
    last: u64,
    /// Synced length: the reader never reads past it.
    bytes: u64,
    records: u64,
    path: PathBuf,
}

struct ReadPos {
    /// `first` of the segment being read.
    seg: u64,
    offset: u64,
    file: BufReader<File>,
}

struct State {
    segs: VecDeque<Segment>,
    read: Option<ReadPos>,
    /// A record read from disk but not yet handed out (the bypass had an older one).
    peeked: Option<(u64, Vec<u8>)>,
    /// Records not yet read: on disk (after the read position) and in the bypass.
    unread_disk: u64,
    bypass: VecDeque<(u64, Vec<u8>)>,
    bypass_bytes: usize,
    /// Everything at or below this was acknowledged.
    acked: u64,
    acked_saved: u64,
    saved_at: Instant,
    /// Highest sequence number on disk or handed to the bypass.
    last_sseq: u64,
}

impl State {
    fn total_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.bytes).sum()
    }
}

/// The on-disk log. Shared by the writer thread, the upstream (reads, acks) and the spool.
pub struct Disk {
    dir: PathBuf,
    limit: u64,
    seg_target: u64,
    bypass_limit: usize,
    st: Mutex<State>,
    /// Notified when records become readable and when the writer ends.
    readable: Event,
    writer_done: AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    metrics: SpoolMetrics,
}

fn seg_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

fn crc(sseq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&sseq.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Reads one record at the reader's position: `Ok(None)` at a clean end, `Err(())` for a
/// torn or corrupt record.
fn read_record<R: Read>(r: &mut R, out: &mut Vec<u8>) -> Result<Option<u64>, ()> {
    let mut head = [0u8; REC_HEAD];
    let mut got = 0;
    while got < REC_HEAD {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let want = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&head[8..16]);
    let sseq = u64::from_le_bytes(s);
    if len == 0 || len > MAX_BODY || sseq == 0 {
        return Err(());
    }
    out.clear();
    out.resize(len, 0);
    r.read_exact(out).map_err(|_| ())?;
    if crc(sseq, out) != want || split_body(out).is_none() {
        return Err(());
    }
    Ok(Some(sseq))
}

fn io_err<'a>(dir: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        dir: dir.to_owned(),
        what,
        source,
    }
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the folder.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl Disk {
    /// Opens (or creates) the log in `dir`: reads the cursor, scans and repairs the segments.
    pub fn open(
        dir: &Path,
        limit: u64,
        bypass_limit: usize,
        metrics: SpoolMetrics,
    ) -> Result<Disk, DiskError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir, "cannot create the folder"))?;
        let acked = match std::fs::read(dir.join("acked")) {
            Ok(b) if b.len() == 12 => {
                let mut s = [0u8; 8];
                s.copy_from_slice(&b[..8]);
                let v = u64::from_le_bytes(s);
                let c = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
                if crc(v.max(1), &[]) == c {
                    v
                } else {
                    tracing::warn!(dir = %dir.display(), "[spool] dir: the acknowledged cursor is corrupt; replaying the whole log");
                    0
                }
            }
            Ok(_) => {
                tracing::warn!(dir = %dir.display(), "[spool] dir: the acknowledged cursor is corrupt; replaying the whole log");
                0
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(dir, "cannot read the acknowledged cursor")(e)),
        };
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir, "cannot list the folder"))? {
            let entry = entry.map_err(io_err(dir, "cannot list the folder"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_prefix("seg-")
                .and_then(|r| r.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                names.push((n, entry.path()));
            }
        }
        names.sort();
        let mut segs = VecDeque::new();
        let mut unread = 0u64;
        let mut last_sseq = acked;
        let mut body = Vec::new();
        for (first, path) in names {
            let file = File::open(&path).map_err(io_err(dir, "cannot open a segment"))?;
            let mut r = BufReader::new(file);
            let (mut offset, mut n, mut unread_here, mut seg_last) = (0u64, 0u64, 0u64, 0u64);
            let mut torn = false;
            loop {
                match read_record(&mut r, &mut body) {
                    Ok(Some(sseq)) if sseq > seg_last => {
                        offset += (REC_HEAD + body.len()) as u64;
                        n += 1;
                        seg_last = sseq;
                        if sseq > acked {
                            unread_here += 1;
                        }
                    }
                    Ok(None) => break,
                    Ok(Some(_)) | Err(()) => {
                        torn = true;
                        break;
                    }
                }
            }
            drop(r);
            if torn {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(offset);
                tracing::warn!(
                    segment = %path.display(),
                    cut_bytes = len.saturating_sub(offset),
                    "[spool] dir: a torn or corrupt record ends this segment; truncated to its last whole record"
                );
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| {
                        f.set_len(offset)?;
                        f.sync_all()
                    })
                    .map_err(io_err(dir, "cannot truncate a torn segment"))?;
            }
            if n == 0 || seg_last <= acked {
                std::fs::remove_file(&path).map_err(io_err(dir, "cannot remove a segment"))?;
                continue;
            }
            last_sseq = last_sseq.max(seg_last);
            unread += unread_here;
            segs.push_back(Segment {
                first,
                last: seg_last,
                bytes: offset,
                records: n,
                path,
            });
        }
        let seg_target = (limit / 8).clamp(64 << 10, 64 << 20);
        let disk = Disk {
            dir: dir.to_owned(),
            limit,
            seg_target,
            bypass_limit: bypass_limit.max(1),
            st: Mutex::new(State {
                segs,
                read: None,
                peeked: None,
                unread_disk: unread,
                bypass: VecDeque::new(),
                bypass_bytes: 0,
                acked,
                acked_saved: acked,
                saved_at: Instant::now(),
                last_sseq,
            }),
            readable: Event::new(),
            writer_done: AtomicBool::new(false),
            writer: Mutex::new(None),
            metrics,
        };
        {
            let st = disk.state();
            disk.update_gauges(&st);
            if unread > 0 {
                tracing::info!(
                    dir = %dir.display(),
                    records = unread,
                    "[spool] dir: replaying records not acknowledged before the last stop"
                );
            }
        }
        Ok(disk)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_gauges(&self, st: &State) {
        self.metrics
            .disk_depth
            .set((st.unread_disk + st.bypass.len() as u64) as i64);
        self.metrics.disk_bytes.set(st.total_bytes() as i64);
    }

    /// The sequence number the RAM ring continues from.
    pub fn next_sseq(&self) -> u64 {
        self.state().last_sseq + 1
    }

    /// Starts the writer thread that drains `ring` into the log.
    pub(crate) fn start_writer(self: &Arc<Self>, ring: Arc<Inner>) -> Result<(), DiskError> {
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name("marketbox-spool".into())
            .spawn(move || me.writer_loop(&ring))
            .map_err(io_err(&self.dir, "cannot start the spool writer thread"))?;
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    pub fn writer_done(&self) -> bool {
        self.writer_done.load(Ordering::Acquire)
    }

    pub fn listen(&self) -> event_listener::EventListener {
        self.readable.listen()
    }

    pub fn notify_all(&self) {
        self.readable.notify(usize::MAX);
    }

    /// Waits for the writer to flush and end, then saves the cursor.
    pub fn shutdown(&self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        let mut st = self.state();
        self.save_cursor(&mut st);
    }

    /// Records not yet read by the upstream.
    pub fn unread(&self) -> usize {
        let st = self.state();
        (st.unread_disk + st.bypass.len() as u64 + u64::from(st.peeked.is_some())) as usize
    }

    fn writer_loop(&self, ring: &Inner) {
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut file: Option<File> = None;
        let mut failing_since: Option<Instant> = None;
        let mut retry_at = Instant::now();
        while ring.wait_blocking() {
            batch.clear();
            ring.take_bodies(BATCH_RECORDS, self.seg_target as usize / 2, &mut batch);
            if batch.is_empty() {
                continue;
            }
            let now = Instant::now();
            if failing_since.is_some() && now < retry_at {
                self.to_bypass(&mut batch);
                continue;
            }
            match self.append(&mut file, &batch) {
                Ok(()) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            dir = %self.dir.display(),
                            after = ?since.elapsed(),
                            "[spool] dir: writing to disk again"
                        );
                    }
                }
                Err(err) => {
                    file = None;
                    self.metrics.disk_errors.inc();
                    if failing_since.is_none() {
                        tracing::error!(
                            dir = %self.dir.display(),
                            %err,
                            "[spool] dir: cannot write the on-disk spool (disk full or failing?); \
                             messages go on from RAM without crash safety, retrying every {:?} \
                             (free space, or raise the limit behind [spool] disk_bytes)",
                            DISK_RETRY
                        );
                        failing_since = Some(now);
                    }
                    retry_at = now.checked_add(DISK_RETRY).unwrap_or(now);
                    self.to_bypass(&mut batch);
                }
            }
        }
        self.writer_done.store(true, Ordering::Release);
        self.readable.notify(usize::MAX);
    }

    /// Hands a batch that could not be written to the reader from RAM, bounded by bytes.
    fn to_bypass(&self, batch: &mut Vec<(u64, Vec<u8>)>) {
        let mut st = self.state();
        for (sseq, body) in batch.drain(..) {
            st.bypass_bytes += body.len();
            st.last_sseq = st.last_sseq.max(sseq);
            st.bypass.push_back((sseq, body));
            while st.bypass_bytes > self.bypass_limit {
                let Some((_, old)) = st.bypass.pop_front() else {
                    break;
                };
                st.bypass_bytes -= old.len();
                self.count_body_drop(&old);
            }
        }
        self.update_gauges(&st);
        drop(st);
        self.readable.notify(usize::MAX);
    }

    fn count_body_drop(&self, body: &[u8]) {
        let ch = body.first().copied().map_or(0, usize::from);
        if let Some(c) = self.metrics.dropped.get(ch) {
            c.inc();
        }
    }

    /// Appends and syncs one batch; on failure the segment is cut back to its synced length.
    fn append(&self, file: &mut Option<File>, batch: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
        let size: u64 = batch.iter().map(|(_, b)| (REC_HEAD + b.len()) as u64).sum();
        let first_sseq = batch.first().map_or(0, |(s, _)| *s);
        let last_sseq = batch.last().map_or(0, |(s, _)| *s);
        // A new segment when there is no open one (after start or a failure) or the current
        // one is full; then make room, never deleting the segment about to be appended to.
        let start_len = {
            let mut st = self.state();
            let roll = file.is_none() || st.segs.back().is_none_or(|s| s.bytes >= self.seg_target);
            if roll {
                *file = None;
            }
            let keep = usize::from(!roll);
            while st.total_bytes() + size > self.limit && st.segs.len() > keep {
                self.drop_oldest_segment(&mut st);
            }
            self.update_gauges(&st);
            if roll {
                None
            } else {
                st.segs.back().map(|s| s.bytes)
            }
        };
        let mut buf = Vec::with_capacity(size as usize);
        for (sseq, body) in batch {
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc(*sseq, body).to_le_bytes());
            buf.extend_from_slice(&sseq.to_le_bytes());
            buf.extend_from_slice(body);
        }
        let (f, path, base) = match (file.as_mut(), start_len) {
            (Some(f), Some(len)) => (f, None, len),
            _ => {
                let path = self.dir.join(seg_name(first_sseq));
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)?;
                // The new file's name must survive a crash too.
                File::open(&self.dir)?.sync_all()?;
                (file.insert(f), Some(path), 0)
            }
        };
        let written = f
            .seek(SeekFrom::Start(base))
            .and_then(|_| f.write_all(&buf))
            .and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Cut back to what was synced; if even that fails the next open cuts the torn tail.
            let _ = f.set_len(base);
            if base == 0
                && let Some(p) = &path
            {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        let mut st = self.state();
        match path {
            Some(path) => st.segs.push_back(Segment {
                first: first_sseq,
                last: last_sseq,
                bytes: size,
                records: batch.len() as u64,
                path,
            }),
            None => {
                if let Some(s) = st.segs.back_mut() {
                    s.bytes += size;
                    s.last = last_sseq;
                    s.records += batch.len() as u64;
                }
            }
        }
        st.unread_disk += batch.len() as u64;
        st.last_sseq = st.last_sseq.max(last_sseq);
        self.update_gauges(&st);
        drop(st);
        self.readable.notify(usize::MAX);
        Ok(())
    }

    /// Deletes the oldest segment, counting the records in it the reader had not reached.
    fn drop_oldest_segment(&self, st: &mut State) {
        let Some(seg) = st.segs.pop_front() else {
            return;
        };
        let from = match &st.read {
            Some(r) if r.seg == seg.first => r.offset,
            Some(_) => seg.bytes, // the reader is past this segment
            None => 0,
        };
        if matches!(&st.read, Some(r) if r.seg == seg.first) || st.read.is_none() {
            st.read = None;
        }
        let mut dropped = 0u64;
        if from < seg.bytes
            && let Ok(f) = File::open(&seg.path)
        {
            let mut r = BufReader::new(f);
            if r.seek(SeekFrom::Start(from)).is_ok() {
                let mut body = Vec::new();
                let mut at = from;
                while at < seg.bytes {
                    match read_record(&mut r, &mut body) {
                        Ok(Some(sseq)) => {
                            at += (REC_HEAD + body.len()) as u64;
                            if sseq > st.acked {
                                self.count_body_drop(&body);
                                dropped += 1;
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        st.unread_disk = st.unread_disk.saturating_sub(dropped);
        if let Err(err) = std::fs::remove_file(&seg.path) {
            tracing::warn!(segment = %seg.path.display(), %err, "[spool] dir: cannot remove a full segment");
        }
        if dropped > 0 {
            tracing::warn!(
                dir = %self.dir.display(),
                dropped,
                "[spool] disk_bytes reached: the oldest unsent messages were dropped (counted in marketbox_spool_dropped_total)"
            );
        }
    }

    /// Reads the next record from disk (after the read position), skipping acknowledged
    /// ones.
    fn read_next(&self, st: &mut State) -> Option<(u64, Vec<u8>)> {
        loop {
            let pos = match st.read.take() {
                Some(p) => p,
                None => {
                    let seg = st.segs.front()?;
                    let f = File::open(&seg.path).ok()?;
                    ReadPos {
                        seg: seg.first,
                        offset: 0,
                        file: BufReader::new(f),
                    }
                }
            };
            let mut pos = pos;
            let Some(idx) = st.segs.iter().position(|s| s.first == pos.seg) else {
                // Its segment was deleted: start again from the oldest.
                continue;
            };
            let (bytes, is_last) = (st.segs[idx].bytes, idx + 1 == st.segs.len());
            if pos.offset >= bytes {
                if is_last {
                    st.read = Some(pos);
                    return None;
                }
                let next = &st.segs[idx + 1];
                match File::open(&next.path) {
                    Ok(f) => {
                        st.read = Some(ReadPos {
                            seg: next.first,
                            offset: 0,
                            file: BufReader::new(f),
                        });
                        continue;
                    }
                    Err(err) => {
                        // Stay at the end of this one (never re-read from the start, which
                        // would hand out records twice); the next call tries again.
                        tracing::warn!(segment = %next.path.display(), %err, "[spool] dir: cannot open the next segment");
                        st.read = Some(pos);
                        return None;
                    }
                }
            }
            let mut body = Vec::new();
            match read_record(&mut pos.file, &mut body) {
                Ok(Some(sseq)) => {
                    pos.offset += (REC_HEAD + body.len()) as u64;
                    st.read = Some(pos);
                    if sseq <= st.acked {
                        continue;
                    }
                    st.unread_disk = st.unread_disk.saturating_sub(1);
                    return Some((sseq, body));
                }
                _ => {
                    // Synced bytes that do not read back: skip the rest of this segment.
                    tracing::error!(
                        segment = %st.segs[idx].path.display(),
                        offset = pos.offset,
                        "[spool] dir: a synced record does not read back; skipping the rest of the segment"
                    );
                    pos.offset = bytes;
                    st.read = Some(pos);
                }
            }
        }
    }

    /// Takes the oldest unread record (disk and bypass merged by sequence number), copying
    /// its message into `out`.
    pub fn take(&self, out: &mut Vec<u8>) -> Option<(u64, RecordHeader)> {
        let mut st = self.state();
        loop {
            if st.peeked.is_none() {
                st.peeked = self.read_next(&mut st);
            }
            let disk_sseq = st.peeked.as_ref().map(|(s, _)| *s);
            let bypass_sseq = st.bypass.front().map(|(s, _)| *s);
            let (sseq, body) = match (disk_sseq, bypass_sseq) {
                (None, None) => return None,
                (Some(d), Some(b)) if b < d => {
                    let r = st.bypass.pop_front()?;
                    st.bypass_bytes -= r.1.len();
                    r
                }
                (Some(_), _) => st.peeked.take()?,
                (None, Some(_)) => {
                    let r = st.bypass.pop_front()?;
                    st.bypass_bytes -= r.1.len();
                    r
                }
            };
            self.update_gauges(&st);
            if let Some((_, h, p)) = split_body(&body)
                && let Ok(header) = postcard::from_bytes::<RecordHeader>(h)
            {
                out.clear();
                out.extend_from_slice(p);
                return Some((sseq, header));
            }
        }
    }

    /// Records everything up to `sseq` as acknowledged; saves the cursor now and then and
    /// deletes wholly acknowledged segments.
    pub fn ack_through(&self, sseq: u64) {
        let mut st = self.state();
        if sseq <= st.acked {
            return;
        }
        st.acked = sseq;
        if st.saved_at.elapsed() >= ACK_SAVE_EVERY {
            self.save_cursor(&mut st);
        }
    }

    fn save_cursor(&self, st: &mut State) {
        if st.acked == st.acked_saved {
            return;
        }
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&st.acked.to_le_bytes());
        b[8..].copy_from_slice(&crc(st.acked.max(1), &[]).to_le_bytes());
        st.saved_at = Instant::now();
        if let Err(err) = write_atomically(&self.dir, "acked", &b) {
            self.metrics.disk_errors.inc();
            tracing::warn!(dir = %self.dir.display(), %err, "[spool] dir: cannot save the acknowledged cursor; will retry");
            return;
        }
        st.acked_saved = st.acked;
        // Segments wholly acknowledged (never the one being written) go.
        while st.segs.len() > 1 && st.segs.front().is_some_and(|s| s.last <= st.acked_saved) {
            if let Some(seg) = st.segs.pop_front() {
                if matches!(&st.read, Some(r) if r.seg == seg.first) {
                    st.read = None;
                }
                if let Err(err) = std::fs::remove_file(&seg.path) {
                    tracing::warn!(segment = %seg.path.display(), %err, "[spool] dir: cannot remove an acknowledged segment");
                }
            }
        }
        self.update_gauges(st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Channel, Exchange, Market, MsgId, Symbol};
    use crate::upstream::spool::{Spool, channel_index};

    use crate::testutil::Scratch;

    fn header(seq: u64, channel: Channel) -> RecordHeader {
        RecordHeader {
            exchange: Exchange::Okx,
            market: Market::Perpetual,
            symbol: Symbol::parse("ETH-USDT").expect("a valid symbol"),
            channel,
            seq,
            id: MsgId::new(),
            ts_local_ns: seq,
        }
    }

    fn open(dir: &Path, disk_bytes: u64) -> Spool {
        Spool::open(64 << 10, Some(dir), disk_bytes, SpoolMetrics::default()).expect("opens")
    }

    /// Every record left, after `shutdown` (the writer has finished).
    fn drain(s: &Spool) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some((sseq, h)) = s.try_take(&mut buf) {
            if buf.len() == 8 {
                assert_eq!(buf, h.seq.to_le_bytes());
            }
            out.push((sseq, h.seq));
        }
        out
    }

    #[test]
    fn records_survive_a_reopen_and_acknowledged_ones_are_not_replayed() {
        let d = Scratch::new("disk-reopen");
        let s = open(&d.0, 1 << 20);
        for i in 1..=100u64 {
            s.push(&header(i, Channel::Trade), &i.to_le_bytes());
        }
        s.shutdown();
        let got = drain(&s);
        assert_eq!(got.len(), 100);
        assert_eq!(got.last(), Some(&(100, 100)));
        // TC0: acknowledge 40, stop, reopen: 41..=100 come back with their sequence numbers.
        s.ack_through(40);
        s.shutdown();
        drop(s);
        let s = open(&d.0, 1 << 20);
        assert_eq!(s.len(), 60);
        s.shutdown();
        let got = drain(&s);
        assert_eq!(got.first(), Some(&(41, 41)));
        assert_eq!(got.len(), 60);
        // TC1: new records continue the sequence.
        drop(s);
        let s = open(&d.0, 1 << 20);
        s.push(&header(101, Channel::Trade), &101u64.to_le_bytes());
        s.shutdown();
        let got = drain(&s);
        assert_eq!(got.last(), Some(&(101, 101)));
    }

    #[test]
    fn a_torn_tail_is_truncated_on_open() {
        let d = Scratch::new("disk-torn");
        let s = open(&d.0, 1 << 20);
        for i in 1..=10u64 {
            s.push(&header(i, Channel::Trade), &i.to_le_bytes());
        }
        s.shutdown();
        drop(s);
        let seg = std::fs::read_dir(&d.0)
            .expect("lists")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .expect("a segment");
        let len = std::fs::metadata(&seg).expect("meta").len();
        // TC0: half a record appended (a crash mid-write).
        let mut f = OpenOptions::new().append(true).open(&seg).expect("opens");
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).expect("writes");
        drop(f);
        let s = open(&d.0, 1 << 20);
        assert_eq!(std::fs::metadata(&seg).expect("meta").len(), len);
        s.shutdown();
        assert_eq!(drain(&s).len(), 10);
        // TC1: a flipped byte inside the last record: that record goes, the rest stays.
        drop(s);
        let mut bytes = std::fs::read(&seg).expect("reads");
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        std::fs::write(&seg, &bytes).expect("writes");
        let s = open(&d.0, 1 << 20);
        s.shutdown();
        assert_eq!(drain(&s).len(), 9);
    }

    #[test]
    fn past_disk_bytes_the_oldest_unread_records_are_dropped_and_counted() {
        let d = Scratch::new("disk-bound");
        let s = open(&d.0, 1 << 20);
        let payload = vec![7u8; 1000];
        // ~1040 bytes a record on disk: 2000 records cannot fit in 1 MiB.
        for i in 1..=2000u64 {
            let ch = if i % 2 == 0 {
                Channel::Orderbook
            } else {
                Channel::Trade
            };
            s.push(&header(i, ch), &payload);
            if i % 20 == 0 {
                // Let the writer keep up so the RAM ring (64 KiB) drops nothing.
                while s.ram_len() > 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        s.shutdown();
        let m = s.metrics().clone();
        let seqs: Vec<u64> = drain(&s).into_iter().map(|(_, seq)| seq).collect();
        let dropped = m.dropped_total();
        assert!(dropped > 0, "nothing dropped");
        // TC0: exactly the oldest went, and every one of them was counted.
        assert_eq!(seqs.len() as u64 + dropped, 2000);
        assert_eq!(seqs.first(), Some(&(dropped + 1)));
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        let ob = m.dropped[channel_index(Channel::Orderbook)].get();
        let tr = m.dropped[channel_index(Channel::Trade)].get();
        assert_eq!(ob + tr, dropped);
        assert!(ob.abs_diff(tr) <= 1, "{ob} {tr}");
        assert!(m.disk_bytes.get() <= 1 << 20);
    }
}
