//! The storage layer's own errors.
//!
//! [`StoreError`] is what goes wrong underneath: sled, the file system, or bytes on disk that do
//! not decode. It is never a client's fault. [`MvccError`] adds the deterministic, client-caused
//! failures ([`ApplyError`]) for the code paths that can produce both.

use std::path::PathBuf;

use crate::types::ApplyError;

/// A failure of the storage itself. Every variant means this node's data directory cannot be
/// trusted or reached; callers should stop rather than carry on with a partial view.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O underneath, or its own corruption checks).
    #[error("sled database error")]
    Sled(#[from] sled::Error),

    /// Another process holds the database's lock.
    #[error("{} is locked: another process is using this data directory", path.display())]
    Locked { path: std::path::PathBuf },

    /// Bytes on disk (or in a received snapshot) did not decode as what they must be.
    #[error("corrupt {what}: cannot decode")]
    Decode {
        what: &'static str,
        #[source]
        source: bincode::Error,
    },

    /// Bytes decoded, but what they say is impossible (bad checksum, bad key layout, ...).
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },

    /// A value could not be serialized. Rampart's types always serialize, so this is a bug.
    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: bincode::Error,
    },

    /// A file-system operation on the data directory failed.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A thread of the store could not be started.
    #[error("cannot start thread {name}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A part of the store that a write needs has stopped (the store is being closed).
    #[error("{0} has stopped")]
    Stopped(&'static str),

    /// The defragment this call joined (one was running when it was asked for) failed; the text
    /// is that of its error.
    #[error("defragment failed: {0}")]
    Defragment(String),
}

impl StoreError {
    /// Builds a [`StoreError::Corrupt`].
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what,
            detail: detail.into(),
        }
    }

    /// Builds a [`StoreError::Io`] for `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The result of an MVCC operation that can fail either because of the request
/// ([`ApplyError`], deterministic: every replica fails alike) or because of the storage
/// ([`StoreError`], local to this node).
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for MvccError {
    fn from(e: sled::Error) -> Self {
        MvccError::Store(StoreError::Sled(e))
    }
}
