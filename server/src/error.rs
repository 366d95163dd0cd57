//! The server's one error type.

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something failed while doing `context` (its text says what).
    #[error("{context}: {cause}")]
    Context {
        context: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A setting that cannot work, e.g. `initgroups` without `user`.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Listener(#[from] ferrocorn_listener::Error),
    #[error(transparent)]
    Signals(#[from] ferrocorn_signals::Error),
    #[error(transparent)]
    Arbiter(#[from] ferrocorn_arbiter::Error),
}

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
