//! The server's errors, and their one mapping to gRPC statuses with etcd's exact codes and texts.
//!
//! etcd clients turn a status back into a typed error by comparing its message, so the texts
//! below must match etcd's `api/v3rpc/rpctypes/error.go` to the letter.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use rampart_storage::{ApplyError, MvccError, StoreError};
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
    /// A write refused before it was proposed: this member's or the leader's queue of writes
    /// is full, or this member's state machine lags its commit index (etcd's
    /// `ErrGRPCTooManyRequests`). Nothing happened; the client may try again.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: not capable")]
    NotCapable,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// etcd answers this one with code `Unknown`: its gRPC layer has no status for it.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// The database outgrew `--quota-backend-bytes`, or a NOSPACE alarm is raised: the write
    /// would add data (etcd's `ErrGRPCNoSpace`).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// This member's data was found to differ from the cluster's: it serves no client until
    /// its CORRUPT alarm is cleared (etcd's `ErrGRPCCorrupt`).
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// The node is shutting down; the request was not carried out.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// Local storage failed while serving a request; nothing was changed. Its causes follow
    /// in the status message (see [`chain`]).
    #[error("etcdserver: storage failure")]
    Storage(#[source] Cause),
    /// Proclaim or Resign names a leadership that no longer holds (etcd's
    /// `concurrency.ErrElectionNotLeader`), or a Campaign's key went away while it waited.
    #[error("election: not leader")]
    ElectionNotLeader,
    /// Leader found no campaigner (etcd's `concurrency.ErrElectionNoLeader`).
    #[error("election: no leader")]
    ElectionNoLeader,
    /// Proclaim or Resign without a `leader` (etcd's `v3election.ErrMissingLeaderKey`).
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// A Lock's key went away (its lease expired or was revoked) while it waited (etcd 3.5's
    /// `concurrency.ErrSessionExpired`).
    #[error("mutex: session is expired")]
    SessionExpired,
    // Authentication (etcd's auth errors, `crate::auth`).
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExists,
    /// Also a call that needs a user made without credentials while authentication is on.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExists,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token this member did not issue, or one that expired or was voided.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A JSON Web Token issued before the auth store last changed.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// Authenticate on a member given only the public key of `--auth-token=jwt,...`. etcd 3.4
    /// answers its auth store's own error, untranslated: code `Unknown`, "auth: ..." text.
    #[error("auth: token signing attempted with verify-only key")]
    JwtVerifyOnly,
    /// Authenticate with a password for a user added without one. etcd 3.4 answers its auth
    /// store's own error, untranslated: code `Unknown`, "auth: ..." text.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// Deleting the root user or role, or revoking root's root role, with authentication on.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthManagement,
    /// A call etcd defines that Rampart does not serve yet.
    #[error("rampart does not support {0} yet")]
    Unimplemented(&'static str),
    /// A broken invariant of this server (a result that does not match its command, say): a
    /// bug, never the client's doing.
    #[error("{0}")]
    Internal(String),
}

/// The cause of a [`ServerError::Storage`], kept whole so that its source chain reaches the log.
/// Two causes are equal only when they are the same error.
#[derive(Debug, Clone)]
pub struct Cause(Arc<StoreError>);

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Cause {}

impl From<StoreError> for ServerError {
    fn from(error: StoreError) -> ServerError {
        ServerError::Storage(Cause(Arc::new(error)))
    }
}

impl ServerError {
    pub fn code(&self) -> Code {
        use ServerError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | InvalidSortOption | InvalidArgument(_) => Code::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            NoLeader
            | LeaderChanged
            | Timeout
            | TimeoutWaitAppliedIndex
            | Stopped
            | Unhealthy
            | NotSupportedForLearner => Code::Unavailable,
            NotCapable
            | LeaseExists
            | PeerUrlExists
            | MemberNotEnoughStarted
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | NotLeader
            | BadLeaderTransferee => Code::FailedPrecondition,
            MemberBadUrls => Code::InvalidArgument,
            // etcd 3.4 sends TooManyRequests as `Unknown` (its gRPC layer maps it to the
            // client-side error, not to a status); clients match on the text, and
            // ResourceExhausted is the code etcd's rpctypes gives it.
            NoSpace | TooManyRequests => Code::ResourceExhausted,
            Corrupt => Code::DataLoss,
            LeaderTransferTimeout | NoPasswordUser | JwtVerifyOnly => Code::Unknown,
            Storage(_) | Internal(_) => Code::Internal,
            Unimplemented(_) => Code::Unimplemented,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExists | UserNotFound
            | RoleAlreadyExists | RoleNotFound | RoleNotGranted | PermissionNotGranted
            | AuthNotEnabled => Code::FailedPrecondition,
            UserEmpty | RoleEmpty | AuthFailed | InvalidAuthManagement | AuthOldRevision => {
                Code::InvalidArgument
            }
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            ElectionNotLeader | ElectionNoLeader | MissingLeaderKey | SessionExpired => {
                Code::Unknown
            }
        }
    }

    /// The status of a refusal by etcd's `authMaintenanceServer` (Defragment, Snapshot, Hash,
    /// HashKV), which answers its auth store's errors untranslated: code `Unknown` and the
    /// store's own "auth: ..." text.
    pub fn into_maintenance_auth_status(self) -> Status {
        let text = match self {
            ServerError::UserEmpty => "auth: user name is empty",
            ServerError::UserNotFound => "auth: user not found",
            ServerError::PermissionDenied => "auth: permission denied",
            ServerError::InvalidAuthToken => "auth: invalid auth token",
            other => return Status::from(other),
        };
        Status::new(Code::Unknown, text)
    }

    /// The status the Lock and Election services answer with: etcd's text with code `Unknown`,
    /// whatever the error. etcd's `v3lock` and `v3election` servers return the errors of their
    /// own clientv3 client, which turns statuses into `rpctypes.EtcdError`s (or plain Go errors
    /// for the election's), and gRPC sends an error that is no status as `Unknown` (etcd 3.4
    /// answers a Lock on a missing lease with `Unknown` "etcdserver: requested lease not
    /// found"). etcd's Go clients match on the text, not the code.
    pub fn into_concurrency_status(self) -> Status {
        let status = Status::from(self);
        Status::new(Code::Unknown, status.message())
    }
}

impl From<ServerError> for Status {
    fn from(error: ServerError) -> Status {
        // Only internal failures have causes; the client and the log get all of them.
        let message = chain(&error);
        if error.code() == Code::Internal {
            tracing::error!("request failed: {message}");
        }
        Status::new(error.code(), message)
    }
}

/// `error` and each of its sources, joined with ": ".
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<MvccError> for ServerError {
    fn from(error: MvccError) -> ServerError {
        match error {
            MvccError::Apply(e) => e.into(),
            MvccError::Store(e) => e.into(),
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
            ApplyError::NestedBatch => ServerError::Internal(error.to_string()),
            ApplyError::NoSpace => ServerError::NoSpace,
            ApplyError::RootUserNotExist => ServerError::RootUserNotExist,
            ApplyError::RootRoleNotExist => ServerError::RootRoleNotExist,
            ApplyError::UserAlreadyExists => ServerError::UserAlreadyExists,
            ApplyError::UserEmpty => ServerError::UserEmpty,
            ApplyError::UserNotFound => ServerError::UserNotFound,
            ApplyError::RoleAlreadyExists => ServerError::RoleAlreadyExists,
            ApplyError::RoleNotFound => ServerError::RoleNotFound,
            ApplyError::RoleEmpty => ServerError::RoleEmpty,
            ApplyError::PermissionDenied => ServerError::PermissionDenied,
            ApplyError::RoleNotGranted => ServerError::RoleNotGranted,
            ApplyError::PermissionNotGranted => ServerError::PermissionNotGranted,
            ApplyError::InvalidAuthManagement => ServerError::InvalidAuthManagement,
            ApplyError::NestedUser => ServerError::Internal(error.to_string()),
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
            (
                ServerError::NotSupportedForLearner,
                Code::Unavailable,
                "etcdserver: rpc not supported for learner",
            ),
            (
                ServerError::LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                ServerError::MemberBadUrls,
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                ServerError::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                ServerError::Corrupt,
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
            (
                ServerError::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                ServerError::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                ServerError::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                ServerError::RoleNotGranted,
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            (
                ServerError::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                ServerError::NoPasswordUser,
                Code::Unknown,
                "auth: authentication failed, password was given for no password user",
            ),
            (
                ServerError::Unimplemented("Downgrade"),
                Code::Unimplemented,
                "rampart does not support Downgrade yet",
            ),
        ];
        for (error, code, text) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn lock_and_election_statuses_are_unknown_with_etcds_text() {
        let cases = [
            (ServerError::ElectionNotLeader, "election: not leader"),
            (ServerError::ElectionNoLeader, "election: no leader"),
            (
                ServerError::MissingLeaderKey,
                "\"leader\" field must be provided",
            ),
            (ServerError::SessionExpired, "mutex: session is expired"),
            (
                ServerError::LeaseNotFound,
                "etcdserver: requested lease not found",
            ),
            (ServerError::NoLeader, "etcdserver: no leader"),
        ];
        for (error, text) in cases {
            let status = error.into_concurrency_status();
            assert_eq!(status.code(), Code::Unknown);
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn the_root_only_maintenance_calls_refuse_with_the_auth_stores_own_texts() {
        for (error, text) in [
            (ServerError::UserEmpty, "auth: user name is empty"),
            (ServerError::PermissionDenied, "auth: permission denied"),
            (ServerError::InvalidAuthToken, "auth: invalid auth token"),
        ] {
            let status = error.into_maintenance_auth_status();
            assert_eq!((status.code(), status.message()), (Code::Unknown, text));
        }
        let other = ServerError::NoLeader.into_maintenance_auth_status();
        assert_eq!(other.code(), Code::Unavailable);
    }

    #[test]
    fn a_storage_failure_keeps_its_causes() {
        let io = std::io::Error::other("disk on fire");
        let error = ServerError::from(StoreError::Io {
            action: "cannot read",
            path: "/data/db".into(),
            source: io,
        });
        assert_eq!(error.to_string(), "etcdserver: storage failure");
        assert_eq!(
            Status::from(error).message(),
            "etcdserver: storage failure: cannot read /data/db: disk on fire"
        );
    }
}
