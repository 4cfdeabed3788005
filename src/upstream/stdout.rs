//! The stdout upstream: JSON lines, or length-prefixed postcard records.
//!
//! Framing: JSON messages are written one per line. Postcard records are a little-endian `u32`
//! length followed by the bytes, the form `marketbox decode` reads.
//!
//! Design: batches. Each wake-up takes every record waiting in the spool (up to
//! [`BATCH_BYTES`]) into one buffer and writes it with one `write_all`; what was written is
//! acknowledged to the spool (the on-disk log forgets it). The service runs this on a thread
//! of its own with a blocking writer on a duplicate of file descriptor 1 (see
//! `app::run`): a slow reader of stdout then blocks only this thread, never the sessions'
//! executor, and there is no buffering layer (`std::io::Stdout` is line-buffered: a write per
//! line) between the batch and the `write(2)`.

use futures_lite::io::{AsyncWrite, AsyncWriteExt};

use crate::config::Format;
use crate::upstream::spool::Spool;

/// Most bytes taken from the spool per write (one record more when a single one is larger).
pub const BATCH_BYTES: usize = 64 << 10;

/// Drains the spool into `out` until the spool is closed and empty.
pub async fn run<W: AsyncWrite + Unpin>(
    spool: Spool,
    format: Format,
    mut out: W,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(BATCH_BYTES + (8 << 10));
    let frame = match format {
        Format::Json => line,
        Format::Postcard => length_prefixed,
    };
    loop {
        buf.clear();
        let Some(last) = spool.pop_messages(BATCH_BYTES, &mut buf, frame).await else {
            break;
        };
        out.write_all(&buf).await?;
        out.flush().await?;
        spool.ack_through(last);
    }
    out.flush().await
}

/// A JSON message and its newline.
fn line(out: &mut Vec<u8>, msg: &[u8]) {
    out.extend_from_slice(msg);
    out.push(b'\n');
}

/// A postcard record: its length (`u32`, little-endian), then the bytes.
fn length_prefixed(out: &mut Vec<u8>, msg: &[u8]) {
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Channel, Exchange, Market, MsgId, Symbol};
    use crate::upstream::spool::{RecordHeader, SpoolMetrics};

    fn header(seq: u64) -> RecordHeader {
        RecordHeader {
            exchange: Exchange::Binance,
            market: Market::Spot,
            symbol: Symbol::parse("BTC-USDT").expect("a valid symbol"),
            channel: Channel::Trade,
            seq,
            id: MsgId::new(),
            ts_local_ns: 0,
        }
    }

    /// Counts writes, keeps the bytes.
    #[derive(Default)]
    struct Recorder {
        writes: usize,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let me = self.get_mut();
            me.writes += 1;
            me.bytes.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn what_waits_in_the_spool_is_written_in_one_write_per_batch() {
        let spool = Spool::new(1 << 20, SpoolMetrics::default());
        // TC0: 1000 JSON lines of 100 bytes waiting: two writes (64 KiB, then the rest).
        for i in 0..1000u64 {
            spool.push(&header(i), &[b'x'; 100]);
        }
        spool.close();
        let mut rec = Recorder::default();
        smol::block_on(run(spool, Format::Json, &mut rec)).expect("written");
        assert_eq!(rec.bytes.len(), 1000 * 101);
        assert!(
            rec.bytes
                .split(|b| *b == b'\n')
                .take(1000)
                .all(|l| l == [b'x'; 100])
        );
        assert_eq!(rec.writes, 2, "{} writes", rec.writes);
    }

    #[test]
    fn postcard_records_are_length_prefixed() {
        let spool = Spool::new(1 << 20, SpoolMetrics::default());
        spool.push(&header(1), &[7; 3]);
        spool.push(&header(2), &[9; 300]);
        spool.close();
        let mut rec = Recorder::default();
        smol::block_on(run(spool, Format::Postcard, &mut rec)).expect("written");
        let mut want = vec![3, 0, 0, 0, 7, 7, 7, 44, 1, 0, 0];
        want.extend_from_slice(&[9; 300]);
        assert_eq!(rec.bytes, want);
    }
}
