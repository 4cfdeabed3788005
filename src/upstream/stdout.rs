//! The stdout upstream: JSON lines, or length-prefixed postcard records.
//!
//! Framing: JSON messages are written one per line. Postcard records are a little-endian `u32`
//! length followed by the bytes, the form `marketbox decode` reads.

use futures_lite::io::{AsyncWrite, AsyncWriteExt};

use crate::config::Format;
use crate::upstream::spool::Spool;

/// Drains the spool into `out` until the spool is closed and empty.
pub async fn run<W: AsyncWrite + Unpin>(
    spool: Spool,
    format: Format,
    mut out: W,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8 << 10);
    while spool.pop(&mut buf).await.is_some() {
        match format {
            Format::Json => {
                buf.push(b'\n');
                out.write_all(&buf).await?;
            }
            Format::Postcard => {
                let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                out.write_all(&len.to_le_bytes()).await?;
                out.write_all(&buf).await?;
            }
        }
        if spool.is_empty() {
            out.flush().await?;
        }
    }
    out.flush().await
}
