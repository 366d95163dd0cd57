//! Fuzz the request head parser: no panic on any input, and feeding the bytes in two pieces
//! (split where the first byte says) gives exactly the result of feeding them at once.
#![no_main]

use ferrocorn_http::{BodyDecoder, HeadParser, Limits, Parsed};
use libfuzzer_sys::fuzz_target;

fn parse(data: &[u8], split: usize, limits: &Limits) -> String {
    let mut p = HeadParser::new();
    let first = match p.parse(&data[..split], limits) {
        Ok(Parsed::Partial) => p.parse(data, limits),
        done => done,
    };
    match first {
        Ok(Parsed::Complete(head, n)) => {
            assert!(n <= data.len());
            let mut body = Vec::new();
            let mut d = BodyDecoder::new(head.framing(), limits);
            let body_end = d.decode(&data[n..], &mut body);
            format!(
                "{} {} {} {} {:?} {:?} {} {:?} {:?} n={n} body={body_end:?}",
                head.method(),
                head.target(),
                head.path(),
                head.query(),
                head.version(),
                head.headers().collect::<Vec<_>>(),
                head.keep_alive(),
                head.framing(),
                body,
            )
        }
        Ok(Parsed::Partial) => "partial".to_string(),
        Err(e) => {
            assert!([400, 413, 414, 417, 431, 501, 505].contains(&e.status()));
            format!("error {e}")
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        request_line: 256,
        fields: 16,
        field_size: 256,
        body: Some(4096),
        ..Limits::default()
    };
    let split = usize::from(cut) % (data.len() + 1);
    // A split request is only "the same" if the first piece alone could not already fail
    // differently; compare outcomes only when the first piece was partial.
    let mut p = HeadParser::new();
    if let Ok(Parsed::Partial) = p.parse(&data[..split], &limits) {
        assert_eq!(
            parse(data, split, &limits),
            parse(data, data.len(), &limits)
        );
    } else {
        parse(data, data.len(), &limits);
    }
});
