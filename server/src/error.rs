//! The server's one error type.

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something failed while doing `context` (its text says what).
    #[error("{context}: {cause}")]
    Context {
        /// What was being done ("writing the pid file /run/app.pid").
        context: String,
        /// What went wrong.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A setting that cannot work, e.g. `initgroups` without `user`.
    #[error("{0}")]
    Invalid(String),
    /// Binding or adopting a listening socket.
    #[error(transparent)]
    Listener(#[from] ferrocorn_listener::Error),
    /// Installing the signal handlers.
    #[error(transparent)]
    Signals(#[from] ferrocorn_signals::Error),
    /// Starting the arbiter (its heartbeat slots).
    #[error(transparent)]
    Arbiter(#[from] ferrocorn_arbiter::Error),
}

/// `Result` with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Say what was being done when an error happened: `.context("...")`, `.with_context(|| ...)`.
pub(crate) trait Context<T> {
    fn context(self, context: &str) -> Result<T>;
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, context: &str) -> Result<T> {
        self.with_context(|| context.to_string())
    }

    fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context(),
            cause: Box::new(e),
        })
    }
}
