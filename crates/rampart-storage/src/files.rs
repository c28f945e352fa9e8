//! Small files beside the sled database, replaced atomically.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::StoreError;

/// Replaces `dir/name` with `bytes`: writes `dir/name.tmp`, fsyncs it, renames it over and
/// fsyncs `dir`. After a crash the file holds the old contents or the new, never a mix.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = fs::File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| StoreError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| StoreError::io("fsync", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename into", &path, e))?;
    sync_dir(dir)
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync", dir, e))
}
