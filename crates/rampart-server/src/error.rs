//! The server's errors, and their one mapping to gRPC statuses with etcd's exact codes and texts.
//!
//! etcd clients turn a status back into a typed error by comparing its message, so the texts
//! below must match etcd's `api/v3rpc/rpctypes/error.go` to the letter.

use rampart_storage::{ApplyError, MvccError};
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A request field holds a value the API does not define (an unknown enum value, say).
    #[error("etcdserver: {0}")]
    InvalidArgument(String),
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, waiting for the applied index took too long")]
    TimeoutWaitAppliedIndex,
    #[error("etcdserver: not capable")]
    NotCapable,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// The node is shutting down; the request was not carried out.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// Local storage failed while serving a read; nothing was changed.
    #[error("etcdserver: storage failure: {0}")]
    Storage(String),
}

impl ServerError {
    pub fn code(&self) -> Code {
        use ServerError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | InvalidSortOption | InvalidArgument(_) => Code::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            NoLeader | LeaderChanged | Timeout | TimeoutWaitAppliedIndex | Stopped => {
                Code::Unavailable
            }
            NotCapable | LeaseExists => Code::FailedPrecondition,
            Storage(_) => Code::Internal,
        }
    }
}

impl From<ServerError> for Status {
    fn from(error: ServerError) -> Status {
        Status::new(error.code(), error.to_string())
    }
}

impl From<MvccError> for ServerError {
    fn from(error: MvccError) -> ServerError {
        match error {
            MvccError::Apply(e) => e.into(),
            MvccError::Store(e) => ServerError::Storage(e.to_string()),
        }
    }
}

impl From<ApplyError> for ServerError {
    fn from(error: ApplyError) -> ServerError {
        match error {
            ApplyError::KeyNotFound => ServerError::KeyNotFound,
            ApplyError::LeaseNotFound => ServerError::LeaseNotFound,
            ApplyError::Compacted => ServerError::Compacted,
            ApplyError::FutureRevision => ServerError::FutureRevision,
            ApplyError::LeaseExists => ServerError::LeaseExists,
            // Only a server bug proposes one.
            ApplyError::NestedBatch => ServerError::Storage(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_etcds_code_and_text() {
        let cases = [
            (
                ServerError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                ServerError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                ServerError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                ServerError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
        ];
        for (error, code, text) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), text);
        }
    }
}
