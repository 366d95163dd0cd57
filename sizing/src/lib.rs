//! How many workers fit on this machine: cgroup-aware CPU and memory budgets, per-process memory
//! (RSS/PSS/USS from /proc), and the worker-count recommendation.
//!
//! INTERFACE STUB — the sizing helper owns this crate.
