//! Fuzz the chunked body decoder: no panic, never more output than the body limit, and decoding
//! in two pieces gives the same body, trailers and end as decoding at once.
#![no_main]

use ferrocorn_http::{BodyDecoder, BodyFraming, Limits};
use libfuzzer_sys::fuzz_target;

const MAX: u64 = 4096;

fn decode(pieces: &[&[u8]]) -> (Vec<u8>, Result<usize, u16>, bool, Vec<(String, Vec<u8>)>) {
    let limits = Limits {
        body: Some(MAX),
        ..Limits::default()
    };
    let mut d = BodyDecoder::new(BodyFraming::Chunked, &limits);
    let mut out = Vec::new();
    let mut used = 0;
    for piece in pieces {
        match d.decode(piece, &mut out) {
            Ok(n) => {
                assert!(n <= piece.len());
                assert!(n == piece.len() || d.is_done());
                used += n;
                if d.is_done() {
                    break;
                }
            }
            Err(e) => return (out, Err(e.status()), false, Vec::new()),
        }
    }
    assert!(out.len() as u64 <= MAX);
    (out, Ok(used), d.is_done(), d.trailers().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(cut) % (data.len() + 1);
    let whole = decode(&[data]);
    let split = decode(&[&data[..split], &data[split..]]);
    // Errors may carry different partial output; everything else must agree.
    match (&whole.1, &split.1) {
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => assert_eq!(whole, split),
    }
});
