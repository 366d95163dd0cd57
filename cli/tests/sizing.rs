//! `ferrocorn sizing`: the advisor measures real apps (tests/apps/sizing_apps.py) and its
//! recommendation follows what the app does with a request; bounded by --duration, and every
//! server it starts is stopped.

use std::time::Duration;

use ferrocorn_testkit::*;
use serde_json::Value;

/// More than any --duration below, for start-up and the last step.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// One sweep at a time: two sweeps on the same CPUs would measure each other.
static ONE_SWEEP: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_sweep() -> std::sync::MutexGuard<'static, ()> {
    ONE_SWEEP.lock().unwrap_or_else(|e| e.into_inner())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `ferrocorn sizing --json --duration SECONDS ARGS --chdir tests/apps sizing_apps:APP`, which
/// must succeed, and end about when --duration says.
fn sizing_json(app: &str, seconds: u64, args: &[&str]) -> Value {
    let app = format!("sizing_apps:{app}");
    let duration = seconds.to_string();
    let mut all = vec!["sizing", "--json", "--duration", &duration];
    all.extend_from_slice(args);
    all.extend(["--chdir", "tests/apps", &app]);
    let started = std::time::Instant::now();
    let run = run_ferrocorn(&all, RUN_TIMEOUT);
    // Bounded: the last step is cut at the deadline; a few seconds to stop its server.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(seconds + 5),
        "--duration {seconds} took {took:?}"
    );
    assert!(
        run.status.success(),
        "ferrocorn {all:?} failed ({}):\n{}",
        run.status,
        run.stderr
    );
    let report: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{}", run.stdout));
    eprintln!("{app}: {}", serde_json::to_string_pretty(&report).unwrap());
    report
}

fn recommended_workers(report: &Value) -> usize {
    report["recommended"]["workers"]
        .as_u64()
        .expect("recommended.workers") as usize
}

fn sweep_row(report: &Value, workers: usize) -> &Value {
    report["sweep"]
        .as_array()
        .expect("sweep is a list")
        .iter()
        .find(|row| row["workers"].as_u64() == Some(workers as u64))
        .unwrap_or_else(|| panic!("no sweep row for {workers} workers: {report}"))
}

/// The parts of the JSON report scripts rely on, for a run of one thread per worker.
fn check_report_shape(report: &Value) {
    check_threaded_report_shape(report, 1);
}

/// The parts of the JSON report scripts rely on, for a run of `threads` app threads per worker.
fn check_threaded_report_shape(report: &Value, threads: usize) {
    let rec = &report["recommended"];
    assert_eq!(rec["threads"], threads, "{rec}");
    assert!(rec["preload"].is_boolean(), "{rec}");
    let reason = rec["reason"].as_str().expect("reason");
    assert!(reason.contains("worker"), "{reason}");
    let command = rec["command"].as_str().expect("command");
    let n = recommended_workers(report);
    let start = match threads {
        1 => format!("ferrocorn -w {n} "),
        t => format!("ferrocorn -w {n} --threads {t} "),
    };
    assert!(command.starts_with(&start), "{command}");
    assert!(command.contains("--chdir tests/apps"), "{command}");
    assert!(
        report["budget"]["cpus"].as_f64().unwrap() >= 1.0,
        "{report}"
    );
    assert!(report["budget"]["memory_budget_bytes"].as_u64().unwrap() > 0);
    let sweep = report["sweep"].as_array().unwrap();
    assert!(
        sweep.len() >= 2,
        "at least 1 and 2 workers measured: {report}"
    );
    assert_eq!(sweep[0]["workers"], 1);
    for row in sweep {
        for field in ["rps", "p99_ms", "total_pss_mib", "worker_uss_mib"] {
            assert!(row[field].as_f64().unwrap() > 0.0, "{field} in {row}");
        }
    }
    // A worker of a small Python app costs megabytes, not kilobytes or gigabytes.
    let uss = sweep[0]["worker_uss_mib"].as_f64().unwrap();
    assert!((1.0..500.0).contains(&uss), "worker USS {uss} MiB");
}

/// What a rasterized plot shows: pixels drawn at all, pixels of the blue (req/s) and red
/// (memory) lines, and the total. The PNG is kept in cargo's test scratch directory for a person
/// to look at.
struct Inked {
    drawn: usize,
    blue: usize,
    red: usize,
    all: usize,
}

fn rasterize(svg: &[u8]) -> Inked {
    let tree = resvg::usvg::Tree::from_data(svg, &resvg::usvg::Options::default())
        .expect("the plot is valid SVG");
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sizing-plot.png");
    pixmap.save_png(&png).expect("writing the PNG");
    eprintln!("plot rasterized to {}", png.display());
    let rgb: Vec<(u8, u8, u8)> = pixmap
        .pixels()
        .iter()
        .map(|p| (p.red(), p.green(), p.blue()))
        .collect();
    let count = |f: &dyn Fn(&(u8, u8, u8)) -> bool| rgb.iter().filter(|p| f(p)).count();
    Inked {
        drawn: count(&|p| *p != (255, 255, 255)),
        blue: count(&|&(r, g, b)| b > 200 && r < 80 && g < 80),
        red: count(&|&(r, g, b)| r > 200 && g < 80 && b < 80),
        all: rgb.len(),
    }
}

#[test]
fn cpu_bound_app_gets_about_the_cpu_count_and_io_bound_app_gets_more() {
    let dir = TempDir::new("sizing-plot");
    let plot = dir.path().join("cpu.svg");
    let _one = one_sweep();
    let cpu = sizing_json("cpu_app", 15, &["--plot", plot.to_str().unwrap()]);
    check_report_shape(&cpu);
    let cpu_workers = recommended_workers(&cpu);
    assert!(
        (1..=2 * cpus() + 1).contains(&cpu_workers),
        "CPU-bound app on {} CPUs: {cpu_workers} workers recommended",
        cpus()
    );
    assert!(
        cpu["recommended"]["reason"]
            .as_str()
            .unwrap()
            .contains("CPU bound"),
        "{}",
        cpu["recommended"]
    );

    let svg = std::fs::read(&plot).expect("--plot wrote the file");
    let text = String::from_utf8_lossy(&svg);
    for label in [
        "requests per second",
        "total PSS (MiB)",
        "workers",
        "recommended: ",
    ] {
        assert!(text.contains(label), "no {label:?} in the plot");
    }
    let inked = rasterize(&svg);
    assert!(
        inked.drawn > inked.all / 100,
        "the plot has lines and axes: {} of {} pixels drawn",
        inked.drawn,
        inked.all
    );
    assert!(
        inked.blue > 200 && inked.red > 200,
        "both lines are drawn: {} blue and {} red pixels",
        inked.blue,
        inked.red
    );

    let io = sizing_json("io_app", 20, &[]);
    check_report_shape(&io);
    let io_workers = recommended_workers(&io);
    assert!(
        io_workers >= 4 && io_workers > cpu_workers,
        "requests that wait 50 ms want more workers: I/O-bound {io_workers}, CPU-bound {cpu_workers}"
    );
    assert!(
        io["workload"].as_str().unwrap().contains("I/O bound"),
        "{}",
        io["workload"]
    );
}

#[test]
fn with_threads_every_step_runs_them_and_the_advice_is_workers_times_threads() {
    let _one = one_sweep();
    let report = sizing_json("io_app", 12, &["--threads", "4"]);
    check_threaded_report_shape(&report, 4);
    let rec = &report["recommended"];
    let n = recommended_workers(&report);
    let reason = rec["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "{n} worker{} × 4 threads",
            if n == 1 { "" } else { "s" }
        )),
        "{reason}"
    );
    // Given once, by the advisor: not a second time from the passed-on flags.
    let command = rec["command"].as_str().unwrap();
    assert_eq!(command.matches("--threads").count(), 1, "{command}");
    for row in report["sweep"].as_array().unwrap() {
        assert_eq!(row["threads"], 4, "{row}");
        let workers = row["workers"].as_u64().unwrap();
        assert!(
            row["connections"].as_u64().unwrap() > workers * 4,
            "more connections than slots: {row}"
        );
    }
    // The server really ran 4 threads: one worker of requests that wait 50 ms serves at most 20
    // a second alone, and about 80 with 4 threads.
    let one = sweep_row(&report, 1)["rps"].as_f64().unwrap();
    assert!(one > 40.0, "1 worker × 4 threads served {one} req/s");
}

#[test]
fn the_memory_budget_caps_the_recommendation() {
    let _one = one_sweep();
    let report = sizing_json("io_app", 15, &["--memory-budget", "40M"]);
    check_report_shape(&report);
    assert_eq!(report["budget"]["memory_budget_bytes"], 40 * 1024 * 1024);
    assert_eq!(report["budget"]["memory_budget_source"], "--memory-budget");
    let n = recommended_workers(&report);
    // With --preload the sweep may go on past what fits without it.
    let rows = match report["recommended"]["preload"].as_bool().unwrap() {
        true => "preload_sweep",
        false => "sweep",
    };
    let row = report[rows]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|r| r["workers"].as_u64() == Some(n as u64))
        .unwrap_or_else(|| panic!("no {rows} row for {n} workers: {report}"));
    let pss = row["total_pss_mib"].as_f64().unwrap();
    assert!(
        pss <= 40.0,
        "{n} workers take {pss} MiB, over the 40 MiB budget"
    );
    for row in report["preload_sweep"].as_array().unwrap() {
        let pss = row["total_pss_mib"].as_f64().unwrap();
        assert!(pss <= 40.0, "a --preload step over the budget: {row}");
    }
    // An I/O-bound app would take many more workers; the budget stopped the sweep.
    let largest = report["sweep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["workers"].as_u64().unwrap())
        .max()
        .unwrap();
    let per_worker = sweep_row(&report, 1)["worker_pss_mib"].as_f64().unwrap();
    assert!(
        (largest as f64) * per_worker <= 40.0 + per_worker,
        "the sweep went to {largest} workers of {per_worker} MiB with a 40 MiB budget"
    );
    assert!(
        report["recommended"]["reason"]
            .as_str()
            .unwrap()
            .contains("40 MiB budget"),
        "{}",
        report["recommended"]
    );
}

#[test]
fn an_error_answer_to_the_warm_up_stops_the_run_with_status_and_body() {
    let run = run_ferrocorn(
        &[
            "sizing",
            "--duration",
            "10",
            "--url",
            "GET /admin/",
            "--chdir",
            "tests/apps",
            "sizing_apps:error_app",
        ],
        RUN_TIMEOUT,
    );
    assert!(!run.status.success(), "{}", run.stdout);
    assert!(
        run.stderr.contains("GET /admin/ answered 400"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Invalid HTTP_HOST header"),
        "{}",
        run.stderr
    );
}

#[test]
fn urls_from_a_file_are_checked_in_order() {
    let dir = TempDir::new("sizing-urls");
    let urls = dir.path().join("urls.txt");
    std::fs::write(&urls, "# the pages people hit\n/\n\nPOST /form\n").unwrap();
    let run = run_ferrocorn(
        &[
            "sizing",
            "--duration",
            "10",
            "--urls",
            urls.to_str().unwrap(),
            "--chdir",
            "tests/apps",
            "sizing_apps:error_app",
        ],
        RUN_TIMEOUT,
    );
    assert!(!run.status.success());
    // The first URL of the file is the first checked.
    assert!(run.stderr.contains("GET / answered 400"), "{}", run.stderr);
}

#[test]
fn a_stated_concurrency_is_the_load_and_caps_the_workers() {
    let _one = one_sweep();
    let report = sizing_json("io_app", 12, &["--concurrency", "3"]);
    check_report_shape(&report);
    assert_eq!(report["load"]["concurrency"], 3);
    assert!(report["load"]["assumed"]
        .as_str()
        .unwrap()
        .contains("3 simultaneous requests"));
    for row in report["sweep"].as_array().unwrap() {
        assert_eq!(row["connections"], 3, "{row}");
    }
    let n = recommended_workers(&report);
    assert!(
        (1..=3).contains(&n),
        "{n} workers for 3 simultaneous requests"
    );
}

#[test]
fn an_app_module_named_sizing_is_served_as_sizing_application() {
    let dir = TempDir::new("sizing-module");
    std::fs::write(
        dir.path().join("sizing.py"),
        "def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Length', '6')])\n    return [b'served']\n",
    )
    .unwrap();
    let server = Server::start_in(
        &["--chdir", dir.str(), "sizing:application"],
        &repo_root(),
        &[],
    );
    let resp = get(server.addr(), "/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "served");
}

#[test]
fn an_app_that_fails_to_load_is_reported_with_the_reason() {
    for preload in [false, true] {
        let mut args = vec!["sizing", "--duration", "10", "--chdir", "tests/apps"];
        if preload {
            args.push("--preload");
        }
        args.push("import_error:app");
        let run = run_ferrocorn(&args, RUN_TIMEOUT);
        assert!(!run.status.success(), "{}", run.stdout);
        assert!(
            run.stderr.contains("cannot be measured")
                && run.stderr.contains("import_error.py fails on purpose"),
            "preload {preload}: {}",
            run.stderr
        );
    }
}

#[test]
fn bad_sizes_and_urls_are_refused_by_name() {
    let run = run_ferrocorn(
        &["sizing", "--memory-budget", "600X", "sizing_apps:io_app"],
        RUN_TIMEOUT,
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--memory-budget"), "{}", run.stderr);
    let run = run_ferrocorn(
        &[
            "sizing",
            "--url",
            "no-slash",
            "--chdir",
            "tests/apps",
            "sizing_apps:io_app",
        ],
        RUN_TIMEOUT,
    );
    assert!(!run.status.success());
    assert!(run.stderr.contains("must start with '/'"), "{}", run.stderr);
}

#[test]
fn ctrl_c_stops_every_server_it_started() {
    let _one = one_sweep();
    let mut advisor = Server::spawn(
        &[
            "sizing",
            "--duration",
            "60",
            "--chdir",
            "tests/apps",
            "sizing_apps:io_app",
        ],
        &repo_root(),
        &[],
    );
    // Interrupt while a step's server runs: its master and worker under the advisor. (Not by an
    // environment marker: process titles overwrite what /proc/PID/environ shows.)
    let tree = wait_for("a server started by the advisor", BOOT_TIMEOUT, || {
        let tree = descendants_of(advisor.pid());
        (tree.len() >= 2).then_some(tree)
    });
    advisor.signal(libc::SIGINT);
    let status = advisor.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(130), "{}", advisor.log_text());
    assert!(advisor.log_text().contains("interrupted"));
    let left: Vec<i32> = tree.into_iter().filter(|pid| pid_alive(*pid)).collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
}

#[test]
fn a_django_project_is_measured_with_its_virtualenv_chdir_and_env() {
    let venv = test_venv();
    let dir = TempDir::new("sizing-django");
    let db = dir.path().join("notes.sqlite3");
    let env = format!("DJANGO_DEMO_DB={}", db.display());
    let _one = one_sweep();
    let args = [
        "sizing",
        "--json",
        "--duration",
        "15",
        "--virtualenv",
        venv.to_str().unwrap(),
        "--chdir",
        "tests/apps/django_demo",
        "--env",
        &env,
        "--url",
        "/notes/count",
        "--url",
        "GET /",
        "mysite.wsgi",
    ];
    let run = run_ferrocorn(&args, RUN_TIMEOUT);
    assert!(run.status.success(), "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("JSON");
    check_report_shape(&report);
    assert_eq!(
        report["load"]["urls"],
        serde_json::json!(["GET /notes/count", "GET /"])
    );
    let command = report["recommended"]["command"].as_str().unwrap();
    for part in [
        "--virtualenv",
        "--chdir tests/apps/django_demo",
        "mysite.wsgi",
    ] {
        assert!(command.contains(part), "{command}");
    }
    assert!(command.contains(&env), "{command}");
    // The app ran with the --env it was given: its database is where that said.
    assert!(db.exists(), "no database at {}", db.display());
    // Django costs a worker more than a bare WSGI function.
    let uss = sweep_row(&report, 1)["worker_uss_mib"].as_f64().unwrap();
    assert!(uss > 5.0, "a Django worker's USS is {uss} MiB");
}
