//! Alarms as the API sees them, and the space quota (etcd's `etcdserver/quota.go` and
//! `api/v3rpc/quota.go`).
//!
//! The quota is checked where a write enters, before Raft: when this member's database size
//! plus the request's cost reaches `--quota-backend-bytes`, the member raises its NOSPACE alarm
//! through Raft and refuses the request. Once the alarm is applied, every member's applier
//! refuses puts, txns with puts and lease grants (`rampart_storage`'s `alarms`), until an
//! operator frees space and clears it (`etcdctl alarm disarm`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;
use rampart_api::etcdserverpb as pb;
use rampart_storage::{AlarmMember, AlarmType};

use crate::error::ServerError;

/// etcd's estimate of what storing a key's metadata costs, added to a put's size.
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of what storing a lease costs.
pub(crate) const LEASE_OVERHEAD: u64 = 64;
/// How long a measured database size is reused: measuring it reads the data directory.
const SIZE_FRESH_FOR: Duration = Duration::from_millis(100);

/// The protobuf alarm type `value` as a domain type, for a request that raises or clears one:
/// NOSPACE or CORRUPT; anything else is refused.
pub(crate) fn alarm_type_from_pb(value: i32) -> Result<AlarmType, ServerError> {
    match pb::AlarmType::try_from(value) {
        Ok(pb::AlarmType::Nospace) => Ok(AlarmType::NoSpace),
        Ok(pb::AlarmType::Corrupt) => Ok(AlarmType::Corrupt),
        _ => Err(ServerError::InvalidArgument(format!(
            "alarm type {value} cannot be raised or cleared (NOSPACE = 1, CORRUPT = 2)"
        ))),
    }
}

/// The check of an alarm type in a forwarded [`rampart_storage::Command::Alarm`]: as
/// [`alarm_type_from_pb`].
pub(crate) fn alarm_type(alarm: AlarmType) -> Result<(), ServerError> {
    match alarm {
        AlarmType::NoSpace | AlarmType::Corrupt => Ok(()),
        AlarmType::None => Err(ServerError::InvalidArgument(
            "alarm type NONE cannot be raised or cleared".into(),
        )),
    }
}

/// The protobuf number of `alarm`.
fn alarm_type_to_pb(alarm: AlarmType) -> pb::AlarmType {
    match alarm {
        AlarmType::None => pb::AlarmType::None,
        AlarmType::NoSpace => pb::AlarmType::Nospace,
        AlarmType::Corrupt => pb::AlarmType::Corrupt,
    }
}

/// `alarm` as etcd's `AlarmMember`.
pub(crate) fn alarm_member(alarm: &AlarmMember) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: alarm.member_id,
        alarm: alarm_type_to_pb(alarm.alarm) as i32,
    }
}

/// `alarm` as etcd's Status lists it in `errors`: the protobuf text of its `AlarmMember`
/// (`memberID:<decimal id> alarm:NOSPACE `, with gogoproto's trailing space).
pub(crate) fn status_error(alarm: &AlarmMember) -> String {
    format!("memberID:{} alarm:{} ", alarm.member_id, alarm.alarm.name())
}

/// etcd's cost of a put: its encoded size plus [`KV_OVERHEAD`].
pub(crate) fn put_cost(put: &pb::PutRequest) -> u64 {
    KV_OVERHEAD + put.encoded_len() as u64
}

/// etcd's cost of a txn: the costs of the puts of its costlier branch (the top level only, as
/// etcd's `costTxn`).
pub(crate) fn txn_cost(txn: &pb::TxnRequest) -> u64 {
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .filter_map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(put)) => Some(put_cost(put)),
                _ => None,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
}

/// The space quota: `--quota-backend-bytes` against the database's size on disk, measured at
/// most every [`SIZE_FRESH_FOR`].
pub(crate) struct Quota {
    /// `None`: no quota.
    limit: Option<u64>,
    /// The last size measured, and when.
    size: AtomicU64,
    measured: Mutex<Option<Instant>>,
}

impl Quota {
    pub(crate) fn new(limit: Option<u64>) -> Quota {
        Quota {
            limit,
            size: AtomicU64::new(0),
            measured: Mutex::new(None),
        }
    }

    /// Whether a request of `cost` fits: etcd's `Available`, size + cost below the quota.
    /// `measure` reads the database's size when the last measure is too old.
    pub(crate) fn available(&self, cost: u64, measure: impl FnOnce() -> u64) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        // One request measures at a time; the others meanwhile take the last size measured.
        if let Some(mut measured) = self.measured.try_lock() {
            if measured.is_none_or(|at| at.elapsed() >= SIZE_FRESH_FOR) {
                self.size.store(measure(), Ordering::Relaxed);
                *measured = Some(Instant::now());
            }
        }
        let size = self.size.load(Ordering::Relaxed);
        size.saturating_add(cost) < limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_and_texts_are_etcds() {
        let put = pb::PutRequest {
            key: b"k".to_vec(),
            value: vec![b'v'; 100],
            ..Default::default()
        };
        assert_eq!(put_cost(&put), 256 + put.encoded_len() as u64);
        let op = |put: &pb::PutRequest| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put.clone())),
        };
        let txn = pb::TxnRequest {
            success: vec![op(&put)],
            failure: vec![op(&put), op(&put)],
            ..Default::default()
        };
        assert_eq!(txn_cost(&txn), 2 * put_cost(&put));
        let alarm = AlarmMember {
            member_id: 10276657743932975437,
            alarm: AlarmType::NoSpace,
        };
        assert_eq!(
            status_error(&alarm),
            "memberID:10276657743932975437 alarm:NOSPACE "
        );
        assert!(alarm_type_from_pb(0).is_err());
        assert!(alarm_type_from_pb(3).is_err());
        assert_eq!(alarm_type_from_pb(2), Ok(AlarmType::Corrupt));
    }

    #[test]
    fn the_quota_refuses_what_would_reach_it() {
        let quota = Quota::new(Some(1000));
        assert!(quota.available(99, || 900));
        // The size measured just now is reused.
        assert!(!quota.available(100, || unreachable!()));
        assert!(Quota::new(None).available(u64::MAX, || unreachable!()));
    }
}
