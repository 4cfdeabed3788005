//! Message encodings: JSON lines and postcard.
//!
//! Design: one reusable buffer per encoder; encoding a message writes into it and returns the
//! bytes, so the steady state allocates nothing once the buffer has grown to the largest
//! message. Postcard carries the same fields in the same order as JSON.
//!
//! Owns: the byte form of `model::Message`. Must not touch: where bytes go.

use crate::config::Format;
use crate::model::Message;

/// Why a message could not be encoded (a bug, never input-driven: every field is bounded).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("json encoding failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("postcard encoding failed: {0}")]
    Postcard(#[from] postcard::Error),
}

/// An encoder with its reusable buffer.
pub struct Encoder {
    format: Format,
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new(format: Format) -> Self {
        Encoder {
            format,
            buf: Vec::with_capacity(8 << 10),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Encodes one message (JSON without the trailing newline).
    pub fn encode(&mut self, msg: &Message) -> Result<&[u8], EncodeError> {
        self.buf.clear();
        match self.format {
            Format::Json => serde_json::to_writer(&mut self.buf, msg)?,
            Format::Postcard => {
                postcard::to_io(msg, &mut self.buf)?;
            }
        }
        Ok(&self.buf)
    }
}

/// Decodes a stream of length-prefixed postcard records (as `marketbox decode` reads them):
/// each record is a little-endian `u32` length and that many bytes.
pub fn decode_postcard(record: &[u8]) -> Result<Message, postcard::Error> {
    postcard::from_bytes(record)
}
