//! Conversions between the etcd protobuf messages and Rampart's domain types, with the request
//! checks etcd makes before a request reaches Raft (its `v3rpc/key.go`). A request that fails a
//! check is answered with etcd's error and changes nothing.

use rampart_api::etcdserverpb as pb;
use rampart_api::mvccpb;
use rampart_storage as domain;

use crate::error::ServerError;

/// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Limits a request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most operations in one txn, counted per branch as etcd does (`--max-txn-ops`).
    pub max_txn_ops: usize,
}

/// The TTL a lease asked for with `requested` seconds is granted: etcd refuses one past
/// [`MAX_LEASE_TTL`] and raises a shorter one than `min_ttl`, so a lease outlives an election.
pub fn lease_ttl(requested: i64, min_ttl: i64) -> Result<i64, ServerError> {
    if requested > MAX_LEASE_TTL {
        return Err(ServerError::LeaseTtlTooLarge);
    }
    Ok(requested.max(min_ttl))
}

fn non_empty(key: Vec<u8>) -> Result<Vec<u8>, ServerError> {
    if key.is_empty() {
        Err(ServerError::EmptyKey)
    } else {
        Ok(key)
    }
}

pub fn range_request(r: pb::RangeRequest) -> Result<domain::RangeRequest, ServerError> {
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = match SortOrder::try_from(r.sort_order) {
        Ok(SortOrder::None) => domain::SortOrder::None,
        Ok(SortOrder::Ascend) => domain::SortOrder::Ascend,
        Ok(SortOrder::Descend) => domain::SortOrder::Descend,
        Err(_) => return Err(ServerError::InvalidSortOption),
    };
    let sort_target = match SortTarget::try_from(r.sort_target) {
        Ok(SortTarget::Key) => domain::SortTarget::Key,
        Ok(SortTarget::Version) => domain::SortTarget::Version,
        Ok(SortTarget::Create) => domain::SortTarget::Create,
        Ok(SortTarget::Mod) => domain::SortTarget::Mod,
        Ok(SortTarget::Value) => domain::SortTarget::Value,
        Err(_) => return Err(ServerError::InvalidSortOption),
    };
    Ok(domain::RangeRequest {
        key: non_empty(r.key)?,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn put_request(r: pb::PutRequest) -> Result<domain::PutRequest, ServerError> {
    let key = non_empty(r.key)?;
    if r.ignore_value && !r.value.is_empty() {
        return Err(ServerError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ServerError::LeaseProvided);
    }
    Ok(domain::PutRequest {
        key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

pub fn delete_request(
    r: pb::DeleteRangeRequest,
) -> Result<domain::DeleteRangeRequest, ServerError> {
    Ok(domain::DeleteRangeRequest {
        key: non_empty(r.key)?,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    })
}

/// Checks and converts a txn: etcd's `checkTxnRequest` (op counts, keys, nested txns within the
/// remaining op budget) and `checkIntervals` (no key written twice along any path).
pub fn txn_request(r: pb::TxnRequest, limits: Limits) -> Result<domain::TxnRequest, ServerError> {
    let txn = txn_checked(r, limits.max_txn_ops)?;
    check_intervals(&txn.success)?;
    check_intervals(&txn.failure)?;
    Ok(txn)
}

fn txn_checked(r: pb::TxnRequest, max_ops: usize) -> Result<domain::TxnRequest, ServerError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(ServerError::TooManyOps);
    }
    let compare = r
        .compare
        .into_iter()
        .map(compare)
        .collect::<Result<_, _>>()?;
    let budget = max_ops - ops;
    let ops = |list: Vec<pb::RequestOp>| -> Result<Vec<domain::RequestOp>, ServerError> {
        list.into_iter().map(|op| request_op(op, budget)).collect()
    };
    Ok(domain::TxnRequest {
        compare,
        success: ops(r.success)?,
        failure: ops(r.failure)?,
    })
}

fn request_op(op: pb::RequestOp, budget: usize) -> Result<domain::RequestOp, ServerError> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => Ok(domain::RequestOp::Range(range_request(r)?)),
        Some(Request::RequestPut(r)) => Ok(domain::RequestOp::Put(put_request(r)?)),
        Some(Request::RequestDeleteRange(r)) => {
            Ok(domain::RequestOp::DeleteRange(delete_request(r)?))
        }
        Some(Request::RequestTxn(r)) => Ok(domain::RequestOp::Txn(txn_checked(r, budget)?)),
        // etcd answers an empty op this way.
        None => Err(ServerError::KeyNotFound),
    }
}

fn compare(c: pb::Compare) -> Result<domain::Compare, ServerError> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let key = non_empty(c.key)?;
    let result = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => domain::CompareResult::Equal,
        Ok(CompareResult::Greater) => domain::CompareResult::Greater,
        Ok(CompareResult::Less) => domain::CompareResult::Less,
        Ok(CompareResult::NotEqual) => domain::CompareResult::NotEqual,
        Err(_) => {
            return Err(ServerError::InvalidArgument(format!(
                "unknown compare result {}",
                c.result
            )))
        }
    };
    // The operand comes from the oneof; a missing operand compares against zero (or the empty
    // value), as etcd's applyCompare reads the zero value of an unset field.
    let union = c.target_union;
    let int = |pick: fn(&TargetUnion) -> Option<i64>| union.as_ref().and_then(pick).unwrap_or(0);
    let target = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Version) => domain::CompareTarget::Version(int(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Create) => domain::CompareTarget::Create(int(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => domain::CompareTarget::Mod(int(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => domain::CompareTarget::Lease(int(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Value) => domain::CompareTarget::Value(match union {
            Some(TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        Err(_) => {
            return Err(ServerError::InvalidArgument(format!(
                "unknown compare target {}",
                c.target
            )))
        }
    };
    Ok(domain::Compare {
        result,
        target,
        key,
        range_end: c.range_end,
    })
}

/// A deleted interval `[start, end)`; `end == None` is a single key, `Some([0])` is unbounded.
struct Deleted<'a> {
    start: &'a [u8],
    end: Option<&'a [u8]>,
}

impl Deleted<'_> {
    fn contains(&self, key: &[u8]) -> bool {
        match self.end {
            None => key == self.start,
            Some([0]) => key >= self.start,
            Some(end) => key >= self.start && key < end,
        }
    }
}

/// etcd's `checkIntervals`: along any path through a txn, no key is put twice and no key is both
/// put and deleted. The then and else branches of one nested txn exclude each other, so they may
/// put the same key.
pub(crate) fn check_intervals(ops: &[domain::RequestOp]) -> Result<(), ServerError> {
    intervals(ops).map(|_| ())
}

fn intervals(ops: &[domain::RequestOp]) -> Result<(Vec<&[u8]>, Vec<Deleted<'_>>), ServerError> {
    let mut dels: Vec<Deleted<'_>> = ops
        .iter()
        .filter_map(|op| match op {
            domain::RequestOp::DeleteRange(d) => Some(Deleted {
                start: &d.key,
                end: (!d.range_end.is_empty()).then_some(d.range_end.as_slice()),
            }),
            _ => None,
        })
        .collect();
    let mut puts: Vec<&[u8]> = Vec::new();
    let deleted = |dels: &[Deleted<'_>], key: &[u8]| dels.iter().any(|d| d.contains(key));
    for op in ops {
        let domain::RequestOp::Txn(txn) = op else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&txn.success)?;
        let (puts_else, dels_else) = intervals(&txn.failure)?;
        for &key in &puts_then {
            if puts.contains(&key) || deleted(&dels, key) {
                return Err(ServerError::DuplicateKey);
            }
            puts.push(key);
        }
        for &key in &puts_else {
            if (puts.contains(&key) && !puts_then.contains(&key)) || deleted(&dels, key) {
                return Err(ServerError::DuplicateKey);
            }
            puts.push(key);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let domain::RequestOp::Put(put) = op else {
            continue;
        };
        let key = put.key.as_slice();
        if puts.contains(&key) || deleted(&dels, key) {
            return Err(ServerError::DuplicateKey);
        }
        puts.push(key);
    }
    Ok((puts, dels))
}

pub fn key_value(kv: domain::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_response(r: domain::RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_response(r: domain::PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: r.prev_kv.map(key_value),
    }
}

pub fn delete_response(
    r: domain::DeleteRangeResponse,
    header: pb::ResponseHeader,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// A watch event; its `prev_kv` only if the watch asked for it (etcd's `prev_kv` option).
pub fn event(e: &domain::Event, with_prev_kv: bool) -> mvccpb::Event {
    let kind = match e.kind {
        domain::EventKind::Put => mvccpb::event::EventType::Put,
        domain::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(e.kv.clone())),
        prev_kv: if with_prev_kv {
            e.prev_kv.clone().map(key_value)
        } else {
            None
        },
    }
}

/// A txn response; every nested response carries the same header, as etcd's do.
pub fn txn_response(r: domain::TxnResponse, header: &pb::ResponseHeader) -> pb::TxnResponse {
    pb::TxnResponse {
        header: Some(*header),
        ..nested_txn_response(r, header.revision)
    }
}

/// A txn's response as etcd's applier builds it (`newTxnResp`), before the server fills in the
/// outermost header: each op's response carries only the revision, a nested txn's an empty
/// header.
fn nested_txn_response(r: domain::TxnResponse, revision: i64) -> pb::TxnResponse {
    use pb::response_op::Response;
    let op_header = pb::ResponseHeader {
        revision,
        ..Default::default()
    };
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                domain::ResponseOp::Range(r) => {
                    Response::ResponseRange(range_response(r, op_header))
                }
                domain::ResponseOp::Put(r) => Response::ResponsePut(put_response(r, op_header)),
                domain::ResponseOp::DeleteRange(r) => {
                    Response::ResponseDeleteRange(delete_response(r, op_header))
                }
                domain::ResponseOp::Txn(r) => {
                    Response::ResponseTxn(nested_txn_response(r, revision))
                }
            }),
        })
        .collect();
    pb::TxnResponse {
        header: Some(pb::ResponseHeader::default()),
        succeeded: r.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request;

    fn put(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    const LIMITS: Limits = Limits { max_txn_ops: 128 };

    #[test]
    fn duplicate_puts_and_put_inside_delete_are_rejected() {
        let twice = txn(vec![put("a"), put("a")], vec![]);
        assert_eq!(txn_request(twice, LIMITS), Err(ServerError::DuplicateKey));
        let covered = txn(vec![del("a", "c"), put("b")], vec![]);
        assert_eq!(txn_request(covered, LIMITS), Err(ServerError::DuplicateKey));
        let unbounded = txn(vec![del("a", "\0"), put("zzz")], vec![]);
        assert_eq!(
            txn_request(unbounded, LIMITS),
            Err(ServerError::DuplicateKey)
        );
        let outside = txn(vec![del("a", "c"), put("c")], vec![]);
        assert!(txn_request(outside, LIMITS).is_ok());
    }

    #[test]
    fn branches_of_a_nested_txn_may_put_the_same_key() {
        let nested = |s, f| pb::RequestOp {
            request: Some(Request::RequestTxn(txn(s, f))),
        };
        let ok = txn(vec![nested(vec![put("k")], vec![put("k")])], vec![]);
        assert!(txn_request(ok, LIMITS).is_ok());
        let clash = txn(vec![nested(vec![put("k")], vec![]), put("k")], vec![]);
        assert_eq!(txn_request(clash, LIMITS), Err(ServerError::DuplicateKey));
    }

    #[test]
    fn op_limits_and_empty_keys() {
        let many = txn((0..129).map(|i| put(&format!("k{i}"))).collect(), vec![]);
        assert_eq!(txn_request(many, LIMITS), Err(ServerError::TooManyOps));
        let empty = txn(vec![put("")], vec![]);
        assert_eq!(txn_request(empty, LIMITS), Err(ServerError::EmptyKey));
        let no_op = txn(vec![pb::RequestOp { request: None }], vec![]);
        assert_eq!(txn_request(no_op, LIMITS), Err(ServerError::KeyNotFound));
    }

    #[test]
    fn put_and_range_checks() {
        let bad_put = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(put_request(bad_put), Err(ServerError::ValueProvided));
        let bad_sort = pb::RangeRequest {
            key: b"k".to_vec(),
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(range_request(bad_sort), Err(ServerError::InvalidSortOption));
    }
}
