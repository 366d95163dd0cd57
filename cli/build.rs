//! Give the `ferrocorn` binary an rpath to the libpython that `ferrocorn-wsgi` was built against.
fn main() {
    if let Ok(dir) = std::env::var("DEP_FERROCORN_PYTHON_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
