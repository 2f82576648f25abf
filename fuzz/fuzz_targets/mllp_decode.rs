//! Fuzz the MLLP decoder with arbitrary bytes in arbitrary chunks: it must never panic, never
//! return a frame over the limit, and decode the same frames whatever the chunking.
#![no_main]

use bytes::BytesMut;
use ferry_mllp::MllpCodec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMIT: usize = 512;

fn decode(data: &[u8], step: usize) -> Vec<Result<Vec<u8>, String>> {
    let mut codec = MllpCodec::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= LIMIT, "frame over the limit");
                    out.push(Ok(frame.to_vec()));
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let whole = decode(rest, rest.len());
    let chunked = decode(rest, usize::from(step % 64) + 1);
    // Frames decoded before the first error must not depend on how the bytes arrived.
    let ok = |v: &[Result<Vec<u8>, String>]| -> Vec<Vec<u8>> {
        v.iter().map_while(|r| r.as_ref().ok().cloned()).collect()
    };
    if !whole.iter().any(Result::is_err) && !chunked.iter().any(Result::is_err) {
        assert_eq!(ok(&whole), ok(&chunked));
    }
});
