//! A Rust app served by ferrocorn's own process model: same flags, signals and workers as the
//! `ferrocorn` command, no Python involved.
//!
//! ```text
//! cargo run --bin ferrocorn-rust-hello -- -w 2 -b 127.0.0.1:8000
//! curl localhost:8000/            # Hello from Rust!
//! curl -d hi localhost:8000/echo  # hi
//! curl 'localhost:8000/alloc?mb=50&s=0.1'  # this worker keeps 50 MiB from now on, then sleeps
//! ```

use std::io::Read;
use std::time::Duration;

use ferrocorn_server::{App, AppError, Request, Response};

#[derive(Default)]
struct Hello {
    /// What `/alloc` made this worker keep: memory that only a new worker gives back.
    hoard: Vec<Vec<u8>>,
}

/// The value of `name=` in a query string like `mb=16&s=0.5`.
fn param<T: std::str::FromStr>(query: &str, name: &str) -> Option<T> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

impl App for Hello {
    fn call(&mut self, req: &mut Request<'_>, res: &mut Response<'_>) -> Result<(), AppError> {
        match (req.head.method(), req.head.path()) {
            ("GET" | "HEAD", "/") => res.text(200, "Hello from Rust!\n"),
            ("POST", "/echo") => {
                let mut body = Vec::new();
                req.read_to_end(&mut body)?;
                let content_type = req
                    .head
                    .header("content-type")
                    .unwrap_or(b"application/octet-stream")
                    .to_vec();
                res.bytes(200, content_type, &body)
            }
            ("GET", "/sleep") => {
                let secs: f64 = param(req.head.query(), "s").unwrap_or(1.0);
                std::thread::sleep(Duration::from_secs_f64(secs));
                res.text(200, "slept\n")
            }
            ("GET", "/alloc") => {
                let mib: usize = param(req.head.query(), "mb").unwrap_or(1);
                let secs: f64 = param(req.head.query(), "s").unwrap_or(0.0);
                // Up to `mib` in all, so repeating it on one worker keeps its size. Non-zero
                // bytes: every page is written, so it is resident and private.
                let held: usize = self.hoard.iter().map(Vec::len).sum();
                if let Some(more) = (mib << 20).checked_sub(held).filter(|&m| m > 0) {
                    self.hoard.push(vec![1u8; more]);
                }
                std::thread::sleep(Duration::from_secs_f64(secs));
                res.text(200, std::process::id().to_string())
            }
            ("GET", "/pid") => res.text(200, std::process::id().to_string()),
            ("GET", "/error") => Err(AppError::Failed("the /error route always fails".into())),
            _ => res.text(404, "not found\n"),
        }
    }
}

fn main() -> std::process::ExitCode {
    ferrocorn_flags::main(|| Box::<Hello>::default())
}

/// The app on the real request and response types, in memory: no socket, no server.
#[cfg(test)]
mod tests {
    use super::Hello;
    use ferrocorn_server::{App, MemoryConn};

    fn serve(raw: &[u8]) -> ferrocorn_server::Recorded {
        let mut conn = MemoryConn::new(raw).unwrap();
        conn.serve(|req, res| Hello::default().call(req, res))
            .unwrap();
        conn.recorded()
    }

    #[test]
    fn hello_and_echo() {
        let r = serve(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.header("content-length").as_deref(), Some(&b"17"[..]));
        assert_eq!(r.body(), b"Hello from Rust!\n");
        let r = serve(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 4\r\n\r\na,b\n");
        assert_eq!(r.header("content-type").as_deref(), Some(&b"text/csv"[..]));
        assert_eq!(r.body(), b"a,b\n");
        assert_eq!(
            serve(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").status(),
            Some(404)
        );
    }
}
