//! The ferrocorn master process.
