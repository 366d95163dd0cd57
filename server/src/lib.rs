//! The ferrocorn server as a library.

pub mod logging;
pub mod privileges;
