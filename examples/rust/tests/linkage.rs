//! A Rust app on the ferrocorn crates carries no Python: its binaries do not link libpython, even
//! when the whole workspace (whose `ferrocorn` binary does, see the ferrocorn-cli linkage test) is
//! built together and Cargo unifies features across it.

use std::path::Path;

use ferrocorn_testkit::links_libpython;

#[test]
fn the_rust_examples_do_not_link_libpython() {
    for bin in [
        env!("CARGO_BIN_EXE_ferrocorn-rust-hello"),
        env!("CARGO_BIN_EXE_ferrocorn-minimal"),
    ] {
        assert!(!links_libpython(Path::new(bin)), "{bin} links libpython");
    }
}
