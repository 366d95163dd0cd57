//! Request parsing: heads of typical sizes (whole and trickled in), and chunked bodies.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrocorn_http::{BodyDecoder, BodyFraming, HeadParser, Limits, Parsed};

const CURL: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

fn browser() -> Vec<u8> {
    b"GET /app/dashboard?tab=overview&page=2 HTTP/1.1\r\n\
Host: www.example.com\r\n\
Connection: keep-alive\r\n\
Cache-Control: max-age=0\r\n\
sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n\
sec-ch-ua-mobile: ?0\r\n\
sec-ch-ua-platform: \"Linux\"\r\n\
Upgrade-Insecure-Requests: 1\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-User: ?1\r\n\
Sec-Fetch-Dest: document\r\n\
Referer: https://www.example.com/app/login\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n\
Cookie: sessionid=8a7sd6f87a6sdf876asdf; csrftoken=asd7f6a8sd7f6a8s7df6a8s7d6f; theme=dark\r\n\r\n"
        .to_vec()
}

/// A head with `n` extra fields, to show cost grows linearly with size.
fn many_fields(n: usize) -> Vec<u8> {
    let mut h = b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n".to_vec();
    for i in 0..n {
        h.extend_from_slice(format!("X-Field-{i}: some value number {i}\r\n").as_bytes());
    }
    h.extend_from_slice(b"\r\n");
    h
}

fn parse_whole(data: &[u8], limits: &Limits) -> usize {
    match HeadParser::new().parse(data, limits).unwrap() {
        Parsed::Complete(h, n) => black_box(h).headers().count() + n,
        Parsed::Partial => unreachable!(),
    }
}

/// Feed the head `step` bytes at a time, as a slow client's reads would arrive.
fn parse_trickled(data: &[u8], step: usize, limits: &Limits) -> usize {
    let mut p = HeadParser::new();
    let mut end = 0;
    loop {
        end = (end + step).min(data.len());
        if let Parsed::Complete(h, n) = p.parse(&data[..end], limits).unwrap() {
            return black_box(h).headers().count() + n;
        }
    }
}

fn heads(c: &mut Criterion) {
    let limits = Limits::default();
    let browser = browser();
    let mut g = c.benchmark_group("head");
    for (name, data) in [("curl", CURL), ("browser", browser.as_slice())] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("whole", name), data, |b, d| {
            b.iter(|| parse_whole(black_box(d), &limits))
        });
        g.bench_with_input(BenchmarkId::new("trickled_16B", name), data, |b, d| {
            b.iter(|| parse_trickled(black_box(d), 16, &limits))
        });
    }
    for n in [10, 50, 98] {
        let data = many_fields(n);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("fields_whole", n), &data, |b, d| {
            b.iter(|| parse_whole(black_box(d), &limits))
        });
        g.bench_with_input(BenchmarkId::new("fields_trickled_1B", n), &data, |b, d| {
            b.iter(|| parse_trickled(black_box(d), 1, &limits))
        });
    }
    g.finish();
}

fn chunked(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("chunked");
    for chunk in [64usize, 4096] {
        let total = 256 * 1024;
        let mut wire = Vec::new();
        for _ in 0..total / chunk {
            wire.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
            wire.extend(std::iter::repeat_n(b'x', chunk));
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        g.throughput(Throughput::Bytes(total as u64));
        g.bench_with_input(BenchmarkId::new("decode_256KiB", chunk), &wire, |b, w| {
            let mut out = Vec::with_capacity(total);
            b.iter(|| {
                out.clear();
                let mut d = BodyDecoder::new(BodyFraming::Chunked, &limits);
                let used = d.decode(black_box(w), &mut out).unwrap();
                assert!(d.is_done());
                used
            })
        });
    }
    g.finish();
}

criterion_group!(benches, heads, chunked);
criterion_main!(benches);
