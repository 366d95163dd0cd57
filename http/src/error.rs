//! The one error type: each variant is a response status.

/// Why a request was rejected; [`Error::status`] is the response to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request line too long")]
    UriTooLong,
    #[error("request header fields too large: {0}")]
    HeadersTooLarge(&'static str),
    #[error("request body too large")]
    BodyTooLarge,
    #[error("HTTP version not supported")]
    VersionNotSupported,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("expectation failed")]
    ExpectationFailed,
    /// The application's response cannot be sent as given (the worker answers 500 instead).
    #[error("invalid response from application: {0}")]
    InvalidResponse(&'static str),
}

impl Error {
    /// 400, 414, 431, 413, 505, 501, 417, or 500 for an invalid response.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::UriTooLong => 414,
            Error::HeadersTooLarge(_) => 431,
            Error::BodyTooLarge => 413,
            Error::VersionNotSupported => 505,
            Error::NotImplemented(_) => 501,
            Error::ExpectationFailed => 417,
            Error::InvalidResponse(_) => 500,
        }
    }
}
