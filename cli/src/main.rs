//! `ferrocorn [OPTIONS] APP`: serve a Python WSGI app. All the work is in the `ferrocorn_cli` library.

fn main() -> std::process::ExitCode {
    ferrocorn_cli::main()
}
