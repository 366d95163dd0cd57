//! Give the `ferrocorn` binary an rpath to the libpython that `ferrocorn-wsgi` was built against.
fn main() {
    if let Ok(dir) = std::env::var("DEP_FERROCORN_PYTHON_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // The Python that evaluates config files when neither --virtualenv nor $VIRTUAL_ENV is set.
    let python = std::env::var("DEP_FERROCORN_PYTHON_PYTHON").unwrap_or_else(|_| "python3".into());
    println!("cargo:rustc-env=FERROCORN_BUILD_PYTHON={python}");
}
