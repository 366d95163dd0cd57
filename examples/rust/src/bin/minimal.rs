//! The smallest server on the ferrocorn library: `ferrocorn-minimal [ADDRESS]`, no Python, no flags.

use ferrocorn_server::{logging, App, AppError, LevelFilter, Request, Response, Server};

struct Hello;

impl App for Hello {
    fn call(&mut self, _req: &mut Request<'_>, res: &mut Response<'_>) -> Result<(), AppError> {
        res.text(200, "Hello\n")
    }
}

fn main() -> Result<std::process::ExitCode, ferrocorn_server::Error> {
    logging::init(LevelFilter::Info);
    let address = std::env::args().nth(1).unwrap_or("127.0.0.1:8000".into());
    let server = Server::builder(|| Box::new(Hello)).bind(address.parse()?);
    Ok(std::process::ExitCode::from(server.workers(2).run()? as u8))
}
