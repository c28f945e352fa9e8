//! Reading the MVCC store: scans of the keys visible at a revision, and etcd's Range.
//!
//! The same code serves client reads ([`crate::Mvcc`]) and the reads inside a write (a Txn's
//! Range ops and compares, a DeleteRange's victims), so both follow one definition of etcd's
//! semantics. The [`KeyIndex`] says which version of each key is visible, history holds it.
//! Writes in progress are passed in as [`Writes`], an overlay merged over the store, so that a Txn
//! reads its own earlier writes.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::codec::{self, KeyRecord};
use crate::error::{MvccError, StoreError};
use crate::index::{KeyIndex, Version};
use crate::key_range::KeyRange;
use crate::types::{ApplyError, KeyValue, RangeRequest, RangeResponse, SortOrder, SortTarget};

/// The writes of the revision being built, by user key: `Some` is a put, `None` a delete.
pub(crate) type Writes = BTreeMap<Vec<u8>, Option<KeyRecord>>;

/// Gathers a scan's result: counts every key, keeps the first `max` of them.
pub(crate) struct Collector {
    pub count: i64,
    pub kvs: Vec<KeyValue>,
    max: Option<usize>,
}

impl Collector {
    /// Keeps every key.
    pub(crate) fn all() -> Collector {
        Collector {
            count: 0,
            kvs: Vec::new(),
            max: None,
        }
    }

    /// Keeps at most `max` keys (still counting all of them).
    fn at_most(max: Option<usize>) -> Collector {
        Collector {
            count: 0,
            kvs: Vec::new(),
            max,
        }
    }

    fn wants_more(&self) -> bool {
        self.max.is_none_or(|m| self.kvs.len() < m)
    }

    /// Counts one key; decodes and keeps it only if wanted, so counting stays cheap.
    fn offer(
        &mut self,
        key: impl FnOnce() -> Result<Vec<u8>, StoreError>,
        record: impl FnOnce() -> Result<KeyRecord, StoreError>,
    ) -> Result<(), StoreError> {
        self.count += 1;
        if self.wants_more() {
            let key = key()?;
            self.kvs.push(record()?.into_kv(key));
        }
        Ok(())
    }
}

/// Reads the record of `version` from history.
pub(crate) fn fetch(tree: &sled::Tree, version: Version) -> Result<KeyRecord, StoreError> {
    let bytes = tree.get(version.history_key())?.ok_or_else(|| {
        StoreError::corrupt(
            "mvcc history",
            format!(
                "the key index names version {}.{} that history does not have",
                version.revision, version.seq
            ),
        )
    })?;
    codec::history_value(&bytes)?
        .decode_record()?
        .ok_or_else(|| {
            StoreError::corrupt(
                "mvcc history",
                format!(
                    "the key index names delete {}.{} as a put",
                    version.revision, version.seq
                ),
            )
        })
}

/// Reads one live key, `writes` taking precedence over the store.
pub(crate) fn get_latest(
    tree: &sled::Tree,
    index: &KeyIndex,
    writes: &Writes,
    key: &[u8],
) -> Result<Option<KeyRecord>, StoreError> {
    if let Some(w) = writes.get(key) {
        return Ok(w.clone());
    }
    index.get(key, None).map(|v| fetch(tree, v)).transpose()
}

/// Where a live key's record is.
pub(crate) enum Found<'a> {
    /// In history, at this version.
    Stored(Version),
    /// Among the writes of the entry being applied.
    Written(&'a KeyRecord),
}

/// Calls `f` with each live key in `range`, in key order, `writes` merged over the store,
/// without reading any record.
pub(crate) fn visit_latest(
    index: &KeyIndex,
    writes: &Writes,
    range: &KeyRange,
    mut f: impl FnMut(&[u8], Found<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut base = index.range(range, None);
    let Some(user_bounds) = range.user_bounds().filter(|_| !writes.is_empty()) else {
        for (key, version) in base {
            f(key, Found::Stored(version))?;
        }
        return Ok(());
    };

    // Merge join of two key-ordered streams; on equal keys the overlay wins.
    let mut over = writes.range::<[u8], _>(user_bounds);
    let mut b = base.next();
    let mut o = over.next();
    loop {
        let order = match (&b, &o) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((bk, _)), Some((ok, _))) => bk.cmp(&ok.as_slice()),
        };
        match order {
            Ordering::Less => {
                if let Some((key, version)) = b.take() {
                    f(key, Found::Stored(version))?;
                }
                b = base.next();
            }
            Ordering::Equal | Ordering::Greater => {
                // A `None` in the overlay is a delete: the key is not there.
                if let Some((key, Some(record))) = o.take() {
                    f(key, Found::Written(record))?;
                }
                if order == Ordering::Equal {
                    b = base.next();
                }
                o = over.next();
            }
        }
    }
    Ok(())
}

/// Scans the live keys in `range`, in key order, with `writes` merged over the store.
pub(crate) fn scan_latest(
    tree: &sled::Tree,
    index: &KeyIndex,
    writes: &Writes,
    range: &KeyRange,
    out: &mut Collector,
) -> Result<(), StoreError> {
    visit_latest(index, writes, range, |key, found| {
        out.offer(
            || Ok(key.to_vec()),
            || match found {
                Found::Stored(version) => fetch(tree, version),
                Found::Written(record) => Ok(record.clone()),
            },
        )
    })
}

/// Scans `range` as it was at `revision`: for each key its latest version `<= revision`, unless
/// that version is a delete. Only valid for `revision >= compact revision`.
pub(crate) fn scan_history(
    tree: &sled::Tree,
    index: &KeyIndex,
    revision: i64,
    range: &KeyRange,
    out: &mut Collector,
) -> Result<(), StoreError> {
    for (key, version) in index.range(range, Some(revision)) {
        out.offer(|| Ok(key.to_vec()), || fetch(tree, version))?;
    }
    Ok(())
}

/// Checks a requested read revision against the store: `<= 0` is "current".
pub(crate) fn check_revision(requested: i64, current: i64, compact: i64) -> Result<(), ApplyError> {
    if requested <= 0 {
        Ok(())
    } else if requested > current {
        Err(ApplyError::FutureRevision)
    } else if requested < compact {
        Err(ApplyError::Compacted)
    } else {
        Ok(())
    }
}

/// etcd's Range: reads `req` from the store (with `writes` merged in for reads at the current
/// revision), where `current` is the store revision before `writes`.
///
/// Follows etcd's `executeRange` (server/etcdserver/txn/range.go) step by step: fetch (only
/// `limit + 1` keys when the order is the natural one and there are no revision filters), drop
/// keys outside the min/max mod/create filters, sort, cut at `limit`. `count` is the number of
/// keys in the range at that revision: like etcd it ignores both `limit` and the filters.
pub(crate) fn read_range(
    tree: &sled::Tree,
    index: &KeyIndex,
    writes: &Writes,
    current: i64,
    compact: i64,
    req: &RangeRequest,
) -> Result<RangeResponse, MvccError> {
    check_revision(req.revision, current, compact)?;
    let range = KeyRange::new(&req.key, &req.range_end);

    // etcd's rangeLimit(): note it looks at the *requested* order, so a non-key target with order
    // NONE still fetches only `limit + 1` keys (in key order) before sorting them.
    let fetch_all =
        !is_default_ordering(req.sort_target, req.sort_order) || has_revision_filters(req);
    let max = if req.count_only {
        Some(0)
    } else if req.limit > 0 && !fetch_all {
        Some(
            usize::try_from(req.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        )
    } else {
        None
    };
    let mut found = Collector::at_most(max);
    if req.revision <= 0 || (req.revision == current && writes.is_empty()) {
        scan_latest(tree, index, writes, &range, &mut found)?;
    } else {
        // An explicit revision inside a write reads the state before the write, as etcd does.
        scan_history(tree, index, req.revision, &range, &mut found)?;
    }

    let mut kvs = found.kvs;
    filter_revisions(&mut kvs, req);
    sort(&mut kvs, req.sort_target, req.sort_order);
    let mut more = false;
    if req.limit > 0 {
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        if kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResponse {
        kvs,
        more,
        count: found.count,
    })
}

/// Whether the storage order (ascending keys) already is the requested order.
fn is_default_ordering(target: SortTarget, order: SortOrder) -> bool {
    order == SortOrder::None || (target == SortTarget::Key && order == SortOrder::Ascend)
}

fn has_revision_filters(req: &RangeRequest) -> bool {
    req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

fn filter_revisions(kvs: &mut Vec<KeyValue>, req: &RangeRequest) {
    kvs.retain(|kv| {
        !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
            || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
            || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
            || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
    });
}

/// Sorts as etcd does: order NONE with a target other than KEY means ASCEND. The sort is stable,
/// so keys that tie on the target stay in key order (etcd leaves ties unspecified).
fn sort(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    let order = if target != SortTarget::Key && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    if is_default_ordering(target, order) {
        return;
    }
    if target == SortTarget::Key {
        // Only DESCEND is left, and keys are unique and ascending.
        kvs.reverse();
        return;
    }
    let by = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    if order == SortOrder::Descend {
        kvs.sort_by(|a, b| by(b, a));
    } else {
        kvs.sort_by(by);
    }
}
