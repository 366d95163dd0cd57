//! Helpers shared by the sizing test binaries.
#![allow(dead_code)] // each binary uses a different subset

use std::path::PathBuf;

pub const MIB: u64 = 1024 * 1024;

pub fn me() -> i32 {
    std::process::id() as i32
}

/// 64 MiB of our own, written so every page is resident and private.
pub fn touched_buffer() -> Vec<u8> {
    let mut v = vec![0u8; 64 * MIB as usize];
    for (i, b) in v.iter_mut().enumerate().step_by(4096) {
        *b = i as u8 | 1;
    }
    std::hint::black_box(v)
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("ferrocorn-sizing-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
