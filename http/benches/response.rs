//! Response writing: heads (with the cached Date) and body framing.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrocorn_http::{
    http_date, write_response_head, BodyEncoder, ResponseFraming, ResponseSpec, Version,
};

fn h(n: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (n.as_bytes().to_vec(), v.as_bytes().to_vec())
}

fn heads(c: &mut Criterion) {
    let small = vec![h("Content-Type", "text/plain"), h("Content-Length", "13")];
    let django = vec![
        h("Content-Type", "text/html; charset=utf-8"),
        h("X-Frame-Options", "DENY"),
        h("Vary", "Cookie"),
        h("Content-Length", "10432"),
        h("X-Content-Type-Options", "nosniff"),
        h("Referrer-Policy", "same-origin"),
        h("Cross-Origin-Opener-Policy", "same-origin"),
        h("Set-Cookie", "csrftoken=abcdefabcdefabcdefabcdefabcdef; expires=Wed, 24 Nov 2027 13:00:00 GMT; Max-Age=31449600; Path=/; SameSite=Lax"),
        h("Connection", "keep-alive"),
    ];
    let mut g = c.benchmark_group("response_head");
    for (name, headers) in [
        ("small", &small),
        ("django", &django),
        ("chunked", &vec![h("Content-Type", "application/json")]),
    ] {
        let spec = ResponseSpec {
            status: 200,
            reason: "OK",
            headers,
            version: Version::Http11,
            head_request: false,
            keep_alive: true,
            server: "ferrocorn",
        };
        g.bench_with_input(BenchmarkId::from_parameter(name), &spec, |b, s| {
            let mut out = Vec::with_capacity(1024);
            b.iter(|| {
                out.clear();
                write_response_head(black_box(s), &mut out).unwrap()
            })
        });
    }
    g.finish();
    c.bench_function("http_date", |b| b.iter(http_date));
}

fn bodies(c: &mut Criterion) {
    let data = vec![b'x'; 16 * 1024];
    let mut g = c.benchmark_group("body_encode_16KiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for (name, framing) in [
        ("length", ResponseFraming::Length(data.len() as u64)),
        ("chunked", ResponseFraming::Chunked),
    ] {
        g.bench_function(name, |b| {
            let mut out = Vec::with_capacity(data.len() + 64);
            b.iter(|| {
                out.clear();
                let mut e = BodyEncoder::new(framing);
                e.encode(black_box(&data), &mut out);
                e.finish(&mut out)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, heads, bodies);
criterion_main!(benches);
