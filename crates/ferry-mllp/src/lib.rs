//! MLLP framing: the Minimal Lower Layer Protocol that carries HL7 v2 over TCP.
//!
//! A frame is `0x0B` (start block), the payload, then `0x1C 0x0D` (end block, carriage
//! return). This crate turns a byte stream into payloads and back, as a
//! [`tokio_util::codec`] codec, and knows nothing about HL7 itself: the payload stays raw bytes
//! and is decoded (charset, segments) above this layer.
//!
//! The decoder is written for hostile input:
//! - bytes before a start block are discarded and counted ([`MllpCodec::discarded_bytes`]) so
//!   the caller can log them;
//! - a lone `0x1C` inside the payload is payload: only `0x1C 0x0D` ends a frame;
//! - a payload longer than the limit is an error that carries the start of the payload
//!   ([`MllpError::FrameTooLarge`]), so the caller can still read MSH-10 and answer with a NAK;
//! - the scan position is remembered between reads, so a large frame arriving in many small
//!   reads is scanned once (linear time).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block (vertical tab).
pub const START_BLOCK: u8 = 0x0B;
/// End block (file separator).
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return, which must follow the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// Default maximum payload size: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// How much of an oversized payload [`MllpError::FrameTooLarge`] keeps.
pub const OVERSIZED_PREFIX_BYTES: usize = 4096;

/// Framing errors.
#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    /// The payload grew past the limit without an end block.
    #[error("MLLP frame exceeds the maximum size of {limit} bytes")]
    FrameTooLarge {
        /// The configured limit in bytes.
        limit: usize,
        /// The first bytes of the payload (at most [`OVERSIZED_PREFIX_BYTES`]).
        prefix: Bytes,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of an MLLP frame ({bytes} bytes received)")]
    Truncated {
        /// Payload bytes received before the end of the stream.
        bytes: usize,
    },
    /// An I/O error from the underlying stream.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The MLLP codec.
#[derive(Debug, Clone)]
pub struct MllpCodec {
    max_frame_bytes: usize,
    /// Offset in the buffer (after the start block) up to which no end block was found.
    scanned: usize,
    /// Bytes discarded outside frames since the last call to [`MllpCodec::discarded_bytes`].
    discarded: usize,
}

impl MllpCodec {
    /// A codec accepting payloads up to `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> MllpCodec {
        MllpCodec {
            max_frame_bytes,
            scanned: 0,
            discarded: 0,
        }
    }

    /// The payload size limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Bytes discarded outside any frame since the last call (and reset the count).
    pub fn discarded_bytes(&mut self) -> usize {
        std::mem::take(&mut self.discarded)
    }
}

impl Default for MllpCodec {
    fn default() -> Self {
        MllpCodec::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder for MllpCodec {
    type Item = Bytes;
    type Error = MllpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        // Drop anything before the start block.
        if src.first() != Some(&START_BLOCK) {
            match memchr::memchr(START_BLOCK, src) {
                Some(start) => {
                    self.discarded += start;
                    src.advance(start);
                    self.scanned = 0;
                }
                None => {
                    self.discarded += src.len();
                    src.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
            }
        }
        // src[0] is the start block; the payload begins at 1.
        let mut from = 1 + self.scanned;
        while let Some(offset) = src
            .get(from..)
            .and_then(|rest| memchr::memchr(END_BLOCK, rest))
        {
            let end = from + offset;
            match src.get(end + 1) {
                Some(&CARRIAGE_RETURN) => {
                    let payload_len = end - 1;
                    if payload_len > self.max_frame_bytes {
                        return Err(self.too_large(src));
                    }
                    let mut frame = src.split_to(end + 2);
                    frame.advance(1);
                    frame.truncate(payload_len);
                    self.scanned = 0;
                    return Ok(Some(frame.freeze()));
                }
                // 0x1C is the last byte so far: wait for the next byte to decide.
                None => {
                    self.scanned = end - 1;
                    return self.check_size(src);
                }
                // A lone 0x1C inside the payload.
                Some(_) => from = end + 1,
            }
        }
        self.scanned = src.len().saturating_sub(1);
        self.check_size(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let bytes = src.len().saturating_sub(1);
        src.clear();
        self.scanned = 0;
        Err(MllpError::Truncated { bytes })
    }
}

impl MllpCodec {
    fn check_size(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        if src.len().saturating_sub(1) > self.max_frame_bytes {
            return Err(self.too_large(src));
        }
        Ok(None)
    }

    fn too_large(&mut self, src: &mut BytesMut) -> MllpError {
        let end = src.len().min(1 + OVERSIZED_PREFIX_BYTES);
        let prefix = Bytes::copy_from_slice(src.get(1..end).unwrap_or_default());
        src.clear();
        self.scanned = 0;
        MllpError::FrameTooLarge {
            limit: self.max_frame_bytes,
            prefix,
        }
    }
}

/// Append one framed payload to `dst`.
pub fn encode_frame(payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(payload.len() + 3);
    dst.put_u8(START_BLOCK);
    dst.put_slice(payload);
    dst.put_u8(END_BLOCK);
    dst.put_u8(CARRIAGE_RETURN);
}

impl Encoder<&[u8]> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), MllpError> {
        encode_frame(item, dst);
        Ok(())
    }
}

impl Encoder<Bytes> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), MllpError> {
        encode_frame(&item, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_frame(payload, &mut b);
        b.to_vec()
    }

    fn decode_all(codec: &mut MllpCodec, input: &[u8]) -> Vec<Bytes> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Ok(Some(f)) = codec.decode(&mut buf) {
            out.push(f);
        }
        out
    }

    #[test]
    fn decodes_frames_and_discards_junk() {
        let mut input = b"junk".to_vec();
        input.extend(frame(b"MSH|one"));
        input.extend(b"\r\n");
        input.extend(frame(b"MSH|two"));
        let mut codec = MllpCodec::default();
        let frames = decode_all(&mut codec, &input);
        assert_eq!(
            frames,
            vec![
                Bytes::from_static(b"MSH|one"),
                Bytes::from_static(b"MSH|two")
            ]
        );
        assert_eq!(codec.discarded_bytes(), 6);
        assert_eq!(codec.discarded_bytes(), 0);
    }

    #[test]
    fn lone_end_block_is_payload() {
        let mut codec = MllpCodec::default();
        let frames = decode_all(&mut codec, &frame(b"A\x1cB\x1c"));
        assert_eq!(frames, vec![Bytes::from_static(b"A\x1cB\x1c")]);
    }

    #[test]
    fn end_block_split_across_reads() {
        let mut codec = MllpCodec::default();
        let mut buf = BytesMut::from(&b"\x0bMSH|x\x1c"[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"\r");
        assert_eq!(
            codec.decode(&mut buf).ok().flatten(),
            Some(Bytes::from_static(b"MSH|x"))
        );
    }

    #[test]
    fn oversized_frame_keeps_a_prefix() {
        let mut codec = MllpCodec::new(8);
        let mut buf = BytesMut::from(&b"\x0bMSH|0123456789"[..]);
        match codec.decode(&mut buf) {
            Err(MllpError::FrameTooLarge { limit, prefix }) => {
                assert_eq!(limit, 8);
                assert_eq!(&prefix[..], b"MSH|0123456789");
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        // Exactly at the limit is fine.
        let mut codec = MllpCodec::new(3);
        assert_eq!(
            decode_all(&mut codec, &frame(b"abc")),
            vec![Bytes::from_static(b"abc")]
        );
    }

    #[test]
    fn eof_in_the_middle_of_a_frame_is_truncated() {
        let mut codec = MllpCodec::default();
        let mut buf = BytesMut::from(&b"\x0bMSH|abc"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(MllpError::Truncated { bytes: 7 })
        ));
        let mut buf = BytesMut::from(&b"garbage"[..]);
        assert!(matches!(codec.decode_eof(&mut buf), Ok(None)));
    }

    proptest! {
        #[test]
        fn any_chunking_decodes_the_same_frames(
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>().prop_filter("no start block", |b| *b != START_BLOCK), 0..200),
                1..8,
            ),
            cuts in proptest::collection::vec(1usize..64, 1..64),
        ) {
            let mut stream = Vec::new();
            for p in &payloads {
                stream.extend(frame(p));
            }
            // Payloads containing 0x1C 0x0D end early by design; compare with a whole-buffer decode.
            let expected = decode_all(&mut MllpCodec::default(), &stream);
            let mut codec = MllpCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < stream.len() {
                let step = cuts[i % cuts.len()].min(stream.len() - pos);
                buf.extend_from_slice(&stream[pos..pos + step]);
                pos += step;
                i += 1;
                while let Ok(Some(f)) = codec.decode(&mut buf) {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, expected);
        }
    }
}
