//! Filling a disk for full-disk tests: [`fill`] writes zeros to a file until the disk
//! holding it has no room left.

use std::io::Write;
use std::path::Path;

/// Fills the disk holding `path` with a file there (big writes first, then smaller ones
/// for the last pages); returns the bytes written, 0 if the file cannot be created.
pub fn fill(path: &Path) -> u64 {
    let Ok(mut f) = std::fs::File::create(path) else {
        return 0;
    };
    let mut written = 0;
    for chunk in [1 << 20, 64 << 10, 4 << 10] {
        let zeros = vec![0u8; chunk];
        while f.write_all(&zeros).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = f.sync_all();
    written
}
