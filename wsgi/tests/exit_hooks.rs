//! `before_exit` runs Python's atexit callbacks (its own test binary: it ends Python's life).

use ferrocorn_wsgi::{before_exit, load, WsgiConfig};

#[test]
fn before_exit_runs_atexit_callbacks() {
    // Nothing happens before Python runs.
    before_exit();
    let dir = std::env::temp_dir().join(format!("ferrocorn-atexit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("ran");
    std::fs::write(
        dir.join("atexit_app.py"),
        format!(
            "import atexit\n\
             atexit.register(lambda: open({:?}, 'w').write('atexit ran'))\n\
             def app(environ, start_response):\n    return []\n",
            marker.to_str().unwrap()
        ),
    )
    .unwrap();
    load(&WsgiConfig {
        app: "atexit_app:app".into(),
        pythonpath: vec![dir.clone()],
        ..Default::default()
    })
    .unwrap();
    assert!(!marker.exists());
    before_exit();
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "atexit ran");
    std::fs::remove_dir_all(&dir).unwrap();
}
