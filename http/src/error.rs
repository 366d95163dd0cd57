//! Two small error types: a request the server refuses (each variant is a response status), and
//! a response the application produced that cannot be sent as given.

/// Why a request was rejected; [`RequestError::status`] is the response to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 400: the message is malformed or ambiguous; the text says how.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// 414: the request line is longer than `--limit-request-line`.
    #[error("request line too long")]
    UriTooLong,
    /// 431: too many header fields, or one too long; the text says which.
    #[error("request header fields too large: {0}")]
    HeadersTooLarge(&'static str),
    /// 413: the body is larger than the body limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// 505: a well-formed HTTP version other than 1.0 and 1.1.
    #[error("HTTP version not supported")]
    VersionNotSupported,
    /// 501: a transfer coding other than `chunked`.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// 417: an `Expect` other than `100-continue`.
    #[error("expectation failed")]
    ExpectationFailed,
}

impl RequestError {
    /// 400, 414, 431, 413, 505, 501 or 417.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::UriTooLong => 414,
            RequestError::HeadersTooLarge(_) => 431,
            RequestError::BodyTooLarge => 413,
            RequestError::VersionNotSupported => 505,
            RequestError::NotImplemented(_) => 501,
            RequestError::ExpectationFailed => 417,
        }
    }
}

/// The application's response cannot be sent as given (the worker answers 500 instead); the
/// message says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid response from application: {0}")]
pub struct ResponseError(pub &'static str);

impl ResponseError {
    /// Always 500: the server's answer to a response it cannot send.
    pub fn status(&self) -> u16 {
        500
    }
}
