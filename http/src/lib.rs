//! Strict, bounded HTTP/1.1 for the server side: request heads (via httparse), request bodies
//! (Content-Length and chunked), and response serialization.
//!
//! No I/O and no policy about sockets: callers feed bytes in and get parsed values or bytes out.
//! `Partial` is not an error; a [`RequestError`] maps to the HTTP status the server should answer
//! with, a [`ResponseError`] says why an application's response cannot be sent.
//!
//! The parser follows RFC 9112 and is stricter wherever leniency would only let two parsers
//! disagree about a message (request smuggling): CRLF only, no obs-fold, one Content-Length of
//! digits, `chunked` exactly once and last, no Content-Length with Transfer-Encoding, exactly one
//! Host in HTTP/1.1, gunicorn's size limits enforced while bytes arrive. The head scanner
//! remembers where it stopped, so feeding a head byte by byte costs linear time.
//!
//! Modules are private; everything public is re-exported here.
#![warn(missing_docs)]

mod body;
mod chars;
mod date;
mod error;
mod head;
mod response;
mod types;
mod uri;

pub use body::BodyDecoder;
pub use chars::is_token;
pub use date::{format_http_date, http_date, UtcTime};
pub use error::{RequestError, ResponseError};
pub use head::{HeadParser, HeaderMapPolicy, RequestHead};
pub use response::{
    error_head_response, error_head_response_with, error_response, error_response_with,
    reason_phrase, serialized_body_len, write_empty_response_head, write_response_head,
    BodyEncoder, ResponseFraming, ResponseHeadOut, ResponseSpec,
};
pub use types::{BodyFraming, Limits, Parsed, Version};
