//! One WSGI app called from several threads at once (`--threads`): `wsgi.multithread`, each
//! call with its own environ and body, thread-local values kept between a thread's requests, and
//! a request interrupted from another thread (`--timeout`). Apps are called through the worker's
//! `App` trait with in-memory connections (`MemoryConn`), one per request.

use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyModule;

use ferrocorn_worker::{App, AppError, Interrupter, MemoryConn, PeerAddr, Recorded, ServerAddr};
use ferrocorn_wsgi::{ensure_initialized, RequestInfo, WsgiApp};

/// Log records, to check what the interrupter logs.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        LOG.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
    });
    ensure_initialized(None).unwrap();
}

/// Every app of these tests, in one module (each test uses its own paths and objects).
const APP: &std::ffi::CStr = c"
import threading, time

in_flight = 0
lock = threading.Lock()
barrier = threading.Barrier(4, timeout=60)
busy_started = threading.Event()
local = threading.local()

def app(environ, start_response):
    global in_flight
    path = environ['PATH_INFO']
    if path == '/multithread':
        body = repr(environ['wsgi.multithread']).encode()
    elif path.startswith('/echo/'):
        with lock:
            in_flight += 1
        body = environ['wsgi.input'].read()
        # All four calls are in the app at once, or this raises BrokenBarrierError.
        barrier.wait()
        with lock:
            in_flight -= 1
        body = path.encode() + b' ' + body
    elif path == '/read':
        body = environ['wsgi.input'].read()
    elif path == '/local':
        local.count = getattr(local, 'count', 0) + 1
        body = str(local.count).encode()
    elif path == '/busy':
        busy_started.set()
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                pass
        except Exception:
            pass
        body = b'never interrupted'
    else:
        body = b'ok'
    start_response('200 OK', [('Content-Type', 'text/plain'),
                              ('Content-Length', str(len(body)))])
    return [body]
";

fn module() -> Py<PyModule> {
    static MODULE: Mutex<Option<Py<PyModule>>> = Mutex::new(None);
    init();
    let mut module = MODULE.lock().unwrap();
    Python::attach(|py| {
        module
            .get_or_insert_with(|| {
                PyModule::from_code(py, APP, c"threaded_app.py", c"threaded_app")
                    .unwrap()
                    .unbind()
            })
            .clone_ref(py)
    })
}

fn apps(threads: usize) -> Vec<WsgiApp> {
    let module = module();
    let callable = Python::attach(|py| module.bind(py).getattr("app").unwrap().unbind());
    WsgiApp::from_object(callable).unwrap().for_threads(threads)
}

/// Serve `raw` (a whole request) with `app` through the worker's `App` trait.
fn call(app: &mut WsgiApp, raw: &[u8]) -> (Result<(), AppError>, Recorded) {
    let mut conn = MemoryConn::new(raw).unwrap();
    let result = conn.serve(|req, res| app.call(req, res));
    (result, conn.recorded())
}

fn get(app: &mut WsgiApp, path: &str) -> (Result<(), AppError>, Recorded) {
    call(
        app,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
}

fn body_text(recorded: &Recorded) -> String {
    String::from_utf8_lossy(&recorded.body()).into_owned()
}

#[test]
fn wsgi_multithread_is_true_only_with_several_threads() {
    for (threads, expected) in [(1, "False"), (3, "True")] {
        let mut apps = apps(threads);
        assert_eq!(apps.len(), threads);
        for app in &mut apps {
            let (result, recorded) = get(app, "/multithread");
            result.unwrap();
            assert_eq!(body_text(&recorded), expected, "{threads} threads");
        }
    }
}

#[test]
fn four_threads_call_the_app_at_once_each_with_its_own_environ_and_body() {
    let handles: Vec<_> = apps(4)
        .into_iter()
        .enumerate()
        .map(|(i, mut app)| {
            thread::spawn(move || {
                let _ = app.interrupter();
                // Big enough to take several reads, different in every thread.
                let body: Vec<u8> = (0..200_000).map(|n| b'a' + ((n + i) % 26) as u8).collect();
                let mut raw = format!(
                    "POST /echo/{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                raw.extend_from_slice(&body);
                let (result, recorded) = call(&mut app, &raw);
                (i, body, result, recorded)
            })
        })
        .collect();
    for handle in handles {
        let (i, body, result, recorded) = handle.join().unwrap();
        result.unwrap_or_else(|e| panic!("thread {i}: {e}"));
        assert_eq!(recorded.status(), Some(200));
        let mut expected = format!("/echo/{i} ").into_bytes();
        expected.extend_from_slice(&body);
        assert!(recorded.body() == expected, "thread {i} got another body");
    }
}

#[test]
fn a_threads_python_thread_state_and_its_thread_locals_last_between_requests() {
    let mut app = apps(1).remove(0);
    let counts = thread::spawn(move || {
        let _ = app.interrupter();
        let mut counts = Vec::new();
        for _ in 0..3 {
            let (result, recorded) = get(&mut app, "/local");
            result.unwrap();
            counts.push(body_text(&recorded));
        }
        counts
    })
    .join()
    .unwrap();
    assert_eq!(counts, ["1", "2", "3"]);
}

/// An app thread as the worker runs one: its interrupter, what tells it to serve its next
/// request, and what it served.
type AppThread = (
    Interrupter,
    mpsc::Sender<()>,
    thread::JoinHandle<Vec<(Result<(), AppError>, Recorded)>>,
);

/// Start `app` on a thread of its own, as the worker does: its interrupter comes back first,
/// then (each time `go` says so) the result of `GET path` for each of `paths`.
fn app_thread(mut app: WsgiApp, paths: Vec<&'static str>) -> AppThread {
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        tx.send(app.interrupter().expect("a WSGI app can be interrupted"))
            .unwrap();
        paths
            .into_iter()
            .map(|path| {
                go_rx.recv().unwrap();
                get(&mut app, path)
            })
            .collect()
    });
    (rx.recv().unwrap(), go_tx, handle)
}

#[test]
fn the_interrupter_raises_worker_timeout_in_a_busy_loop_on_another_thread() {
    let module = module();
    let (interrupt, go, handle) = app_thread(apps(1).remove(0), vec!["/busy", "/"]);
    go.send(()).unwrap();
    let started = Python::attach(|py| {
        let event = module.bind(py).getattr("busy_started").unwrap();
        event
            .call_method1("wait", (60,))
            .unwrap()
            .is_truthy()
            .unwrap()
    });
    assert!(started, "the app never started its loop");
    interrupt("GET /busy");
    // The same thread serves its next request normally.
    go.send(()).unwrap();
    let results = handle.join().unwrap();
    let (busy, next) = (&results[0], &results[1]);
    assert!(
        matches!(busy.0, Err(AppError::Aborted(_))),
        "{:?} {}",
        busy.0,
        body_text(&busy.1)
    );
    assert!(busy.1.status().is_none(), "nothing was sent");
    next.0.as_ref().unwrap();
    assert_eq!(body_text(&next.1), "ok");
    let log = LOG.lock().unwrap().join("\n");
    assert!(
        log.contains(
            "ERROR Worker timed out serving GET /busy: aborting it; Python stack of every thread \
             (most recent call first):"
        ),
        "{log}"
    );
}

#[test]
fn an_interrupt_between_requests_does_not_reach_the_next_one() {
    let (interrupt, go, handle) = app_thread(apps(1).remove(0), vec!["/"]);
    interrupt("GET /gone");
    // The interrupter works on a thread of its own: wait until it has logged (and so has taken
    // the GIL and decided) before the next request starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !LOG
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("serving GET /gone"))
    {
        assert!(std::time::Instant::now() < deadline, "never logged");
        thread::sleep(Duration::from_millis(10));
    }
    // It logged holding the GIL and decides before releasing it: once we have the GIL, it has.
    Python::attach(|_| ());
    go.send(()).unwrap();
    let results = handle.join().unwrap();
    results[0].0.as_ref().unwrap();
    assert_eq!(body_text(&results[0].1), "ok");
}

/// A request body that arrives only once someone else has run Python: it tells `entered` when
/// the app first reads it, then waits for `gate`.
struct GatedBody {
    entered: mpsc::Sender<()>,
    gate: mpsc::Receiver<()>,
    data: std::io::Cursor<Vec<u8>>,
    opened: bool,
}

impl std::io::Read for GatedBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.opened {
            self.opened = true;
            let _ = self.entered.send(());
            self.gate
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| std::io::Error::other("nobody ran Python while the body was read"))?;
        }
        self.data.read(buf)
    }
}

#[test]
fn the_gil_is_released_while_the_app_waits_for_its_body() {
    let app = apps(1).remove(0);
    let (entered_tx, entered) = mpsc::channel();
    let (gate, gate_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut body = GatedBody {
            entered: entered_tx,
            gate: gate_rx,
            data: std::io::Cursor::new(b"late body".to_vec()),
            opened: false,
        };
        let peer = PeerAddr::Tcp(([127, 0, 0, 1], 40000).into());
        let server = ServerAddr {
            name: "localhost".into(),
            port: "8000".into(),
            scheme: "http",
        };
        let info = RequestInfo {
            method: "POST",
            target: "/read",
            path: "/read",
            query: "",
            protocol: "HTTP/1.1",
            headers: vec![("Host", b"t"), ("Content-Length", b"9")],
            peer: &peer,
            server: &server,
        };
        let mut conn = MemoryConn::new(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let result = conn.serve(|_, res| app.serve(&info, &mut body, res));
        (result, conn.recorded())
    });
    entered.recv().unwrap();
    // Blocks for good if the reading thread kept the GIL (the read then fails after a minute).
    Python::attach(|py| py.run(c"x = 1 + 1", None, None).unwrap());
    gate.send(()).unwrap();
    let (result, recorded) = reader.join().unwrap();
    result.unwrap();
    assert_eq!(body_text(&recorded), "late body");
}
