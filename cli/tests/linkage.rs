//! The other side of the Rust examples' linkage test: the `ferrocorn` binary links libpython, so
//! `links_libpython` does see it when it is there.

use std::path::Path;

use ferrocorn_testkit::links_libpython;

#[test]
fn the_ferrocorn_binary_links_libpython() {
    let bin = env!("CARGO_BIN_EXE_ferrocorn");
    assert!(
        links_libpython(Path::new(bin)),
        "{bin} does not link libpython"
    );
}
