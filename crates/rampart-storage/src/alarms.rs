//! The cluster's alarms (etcd's `alarm/alarms.go` and the alarm parts of `apply.go`): which
//! member raised which alarm, kept in the MVCC tree so that they survive restarts and travel in
//! snapshots, and the writes an active NOSPACE alarm refuses (etcd's `applierV3Capped`).
//!
//! An alarm is the meta key `malarm/` + member id (8 bytes big-endian) + alarm type (1 byte),
//! with an empty value (see the layout table in `codec`). They are read into
//! `MvccState::alarms` when the tree is opened or a snapshot installed, and changed only by
//! applying a [`Command::Alarm`], so every member holds the same alarms at the same log index
//! and refuses the same writes.

use std::collections::BTreeSet;

use crate::codec::META_ALARM_PREFIX;
use crate::error::StoreError;
use crate::redo::WriteBatch;
use crate::types::{AlarmAction, AlarmMember, AlarmType, ApplyError, Command, RequestOp};

/// The tree key of `alarm`.
pub(crate) fn alarm_key(alarm: &AlarmMember) -> Vec<u8> {
    let mut out = META_ALARM_PREFIX.to_vec();
    out.extend_from_slice(&alarm.member_id.to_be_bytes());
    out.push(match alarm.alarm {
        AlarmType::None => 0,
        AlarmType::NoSpace => 1,
        AlarmType::Corrupt => 2,
    });
    out
}

/// The alarm a tree key made by [`alarm_key`] stands for.
pub(crate) fn decode_alarm_key(key: &[u8]) -> Result<AlarmMember, StoreError> {
    let rest = &key[META_ALARM_PREFIX.len().min(key.len())..];
    let bad = || StoreError::corrupt("alarm key", format!("malformed alarm key {key:?}"));
    if rest.len() != 9 {
        return Err(bad());
    }
    let member_id = u64::from_be_bytes(rest[..8].try_into().map_err(|_| bad())?);
    let alarm = match rest[8] {
        0 => AlarmType::None,
        1 => AlarmType::NoSpace,
        2 => AlarmType::Corrupt,
        _ => return Err(bad()),
    };
    Ok(AlarmMember { member_id, alarm })
}

/// Stages `action` on `alarm` into `batch` and returns the alarm it changes, as etcd's
/// `AlarmStore.Activate` / `Deactivate`: `None` when it was already raised (or already clear),
/// and then nothing is staged.
pub(crate) fn apply(
    alarms: &BTreeSet<AlarmMember>,
    action: AlarmAction,
    alarm: AlarmMember,
    batch: &mut WriteBatch,
) -> Option<AlarmMember> {
    match action {
        AlarmAction::Activate if !alarms.contains(&alarm) => {
            batch.insert(alarm_key(&alarm), Vec::new());
            Some(alarm)
        }
        AlarmAction::Deactivate if alarms.contains(&alarm) => {
            batch.remove(alarm_key(&alarm));
            Some(alarm)
        }
        _ => None,
    }
}

/// The refusal of `command` under `alarms`: while any member's NOSPACE alarm is raised, puts,
/// txns that hold a put (on either branch, at any depth) and lease grants fail with
/// [`ApplyError::NoSpace`]; reads, deletes, compactions, revokes and alarms go on, so space
/// can be freed. A CORRUPT alarm refuses nothing here: the corrupt member itself stops serving
/// clients (`rampart-server`), while the others go on.
pub(crate) fn refusal(alarms: &BTreeSet<AlarmMember>, command: &Command) -> Option<ApplyError> {
    let no_space = alarms.iter().any(|a| a.alarm == AlarmType::NoSpace);
    if !no_space {
        return None;
    }
    let adds = match command {
        Command::Put(_) | Command::LeaseGrant { .. } => true,
        Command::Txn(txn) => ops_put(&txn.success) || ops_put(&txn.failure),
        _ => false,
    };
    adds.then_some(ApplyError::NoSpace)
}

/// Whether any of `ops` is a put, nested txns included.
fn ops_put(ops: &[RequestOp]) -> bool {
    ops.iter().any(|op| match op {
        RequestOp::Put(_) => true,
        RequestOp::Txn(txn) => ops_put(&txn.success) || ops_put(&txn.failure),
        RequestOp::Range(_) | RequestOp::DeleteRange(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{entry, installed_copy, put_cmd};
    use crate::types::{CommandResult, DeleteRangeRequest, TxnRequest};

    fn alarm(member_id: u64, alarm: AlarmType) -> AlarmMember {
        AlarmMember { member_id, alarm }
    }

    fn activate(a: AlarmMember) -> Command {
        Command::Alarm {
            action: AlarmAction::Activate,
            alarm: a,
        }
    }

    #[test]
    fn keys_round_trip() {
        for a in [
            alarm(0, AlarmType::None),
            alarm(u64::MAX, AlarmType::NoSpace),
            alarm(7, AlarmType::Corrupt),
        ] {
            assert_eq!(decode_alarm_key(&alarm_key(&a)).unwrap(), a);
        }
        assert!(decode_alarm_key(b"malarm/short").is_err());
    }

    #[test]
    fn no_space_refuses_only_writes_that_add_data() {
        let mut alarms = BTreeSet::new();
        let put_in_txn = Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![],
            failure: vec![RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp::Put(Default::default())],
                failure: vec![],
            })],
        });
        let delete = Command::DeleteRange(DeleteRangeRequest::default());
        let grant = Command::LeaseGrant { id: 1, ttl: 5 };
        assert_eq!(refusal(&alarms, &put_cmd("a", "1")), None);
        alarms.insert(alarm(1, AlarmType::Corrupt));
        assert_eq!(refusal(&alarms, &put_cmd("a", "1")), None);
        alarms.insert(alarm(2, AlarmType::NoSpace));
        for refused in [&put_cmd("a", "1"), &put_in_txn, &grant] {
            assert_eq!(refusal(&alarms, refused), Some(ApplyError::NoSpace));
        }
        let only_reads = Command::Txn(TxnRequest::default());
        for allowed in [&delete, &only_reads, &Command::Compact { revision: 1 }] {
            assert_eq!(refusal(&alarms, allowed), None);
        }
    }

    #[test]
    fn alarms_are_applied_kept_across_a_reopen_and_refuse_puts_while_raised() {
        let dir = tempfile::TempDir::new().unwrap();
        let no_space = alarm(9, AlarmType::NoSpace);
        {
            let store = crate::Store::open(dir.path()).unwrap();
            let core = store.core_for_tests();
            let raised = core.apply_entry(&entry(1, activate(no_space))).unwrap();
            assert_eq!(raised.result, Ok(CommandResult::Alarm(vec![no_space])));
            // Raised already: nothing changes.
            let again = core.apply_entry(&entry(2, activate(no_space))).unwrap();
            assert_eq!(again.result, Ok(CommandResult::Alarm(vec![])));
            let put = core.apply_entry(&entry(3, put_cmd("a", "1"))).unwrap();
            assert_eq!(put.result, Err(ApplyError::NoSpace));
            let batch = Command::Batch(vec![put_cmd("b", "1"), put_cmd("c", "1")]);
            let response = core.apply_entry(&entry(4, batch)).unwrap();
            let Ok(CommandResult::Batch(parts)) = response.result else {
                panic!("a batch answers with a batch");
            };
            assert!(parts.iter().all(|p| p.result == Err(ApplyError::NoSpace)));
            assert_eq!(response.revision, 1, "no put was applied");
            store.flush().unwrap();
        }
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        assert_eq!(store.mvcc().alarms(), vec![no_space]);
        let cleared = core
            .apply_entry(&entry(
                5,
                Command::Alarm {
                    action: AlarmAction::Deactivate,
                    alarm: no_space,
                },
            ))
            .unwrap();
        assert_eq!(cleared.result, Ok(CommandResult::Alarm(vec![no_space])));
        assert!(store.mvcc().alarms().is_empty());
        let put = core.apply_entry(&entry(6, put_cmd("a", "1"))).unwrap();
        assert!(put.result.is_ok());
    }

    #[test]
    fn snapshots_carry_the_alarms() {
        let (dir, other) = (
            tempfile::TempDir::new().unwrap(),
            tempfile::TempDir::new().unwrap(),
        );
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        let corrupt = alarm(5, AlarmType::Corrupt);
        core.apply_entry(&entry(1, activate(corrupt))).unwrap();
        core.apply_entry(&entry(2, put_cmd("a", "1"))).unwrap();
        let installed = installed_copy(&store, other.path());
        assert_eq!(installed.mvcc().alarms(), vec![corrupt]);
        // And the installed store still refuses what its alarms refuse: none here.
        assert_eq!(installed.mvcc().revision(), 2);
    }
}
