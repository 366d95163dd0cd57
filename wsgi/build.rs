//! Bake the libpython directory into the rpath so binaries load the libpython they were built
//! against without LD_LIBRARY_PATH. `cargo:rustc-link-arg` only reaches this package's own targets,
//! so the directory is also exported (`links` metadata) for cli/build.rs, with the interpreter's
//! executable. The `X.Y` version built against is exported to the crate so a virtualenv of
//! another version can be refused.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:LIBDIR={dir}");
    }
    // The cli runs config files with this interpreter when no virtualenv is given.
    if let Some(python) = config.executable() {
        println!("cargo:PYTHON={python}");
    }
    let version = config.version();
    println!(
        "cargo:rustc-env=FERROCORN_PYTHON_VERSION={}.{}",
        version.major, version.minor
    );
}
