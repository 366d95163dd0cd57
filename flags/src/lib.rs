//! gunicorn's flag set.

mod options;

pub use options::Options;
