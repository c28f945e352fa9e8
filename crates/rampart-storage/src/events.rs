//! Watch events: what each revision changed, replayed from history or fed live to watchers.
//!
//! History is keyed by revision (see [`crate::codec`]): each revision's versions, in the order
//! the command's operations made them, are its events. [`read_events`] replays revisions from
//! there, with each event's previous version found through the key index; the state machine
//! sends each new revision's events on the live feed ([`crate::WatchFeed`]), built from the
//! records it read while applying, with the previous versions only of the keys some watcher
//! wants them for (see [`crate::watch_feed`]). Both build an event with [`event`], so they agree
//! wherever the feed carries a `prev_kv`.
//!
//! Compaction at `C` removes the versions below `C` that nothing can read any more. A key deleted
//! at exactly `C` loses its tombstone too (as in etcd, whose watchers cannot replay that delete
//! either); since the removal runs in the background, the replay skips such a delete whether or
//! not it is still there, so every member answers alike. Events at `C` itself carry no
//! `prev_kv`, since the versions before `C` are gone.

use std::ops::Bound;

use crate::codec::{self, KeyRecord, Live};
use crate::error::{MvccError, StoreError};
use crate::index::Version;
use crate::key_range::KeyRange;
use crate::mvcc::{MvccCore, MvccState};
use crate::range;
use crate::types::{ApplyError, Event, EventKind, KeyValue, RevisionEvents};

/// One key an entry changed: its record before the entry and after it (`None`: not live).
pub(crate) struct ChangedKey {
    pub key: Vec<u8>,
    pub before: Option<Prior>,
    pub after: Option<KeyRecord>,
}

/// A changed key's record before the entry.
pub(crate) enum Prior {
    /// Read in full: the command needed it, or wrote it itself earlier.
    Record(KeyValue),
    /// Not read: still in history, and what the key index knows of it.
    Stored { version: Version, live: Live },
}

impl Prior {
    pub(crate) fn create_revision(&self) -> i64 {
        match self {
            Prior::Record(kv) => kv.create_revision,
            Prior::Stored { live, .. } => live.create_revision,
        }
    }

    pub(crate) fn version(&self) -> i64 {
        match self {
            Prior::Record(kv) => kv.version,
            Prior::Stored { live, .. } => live.version,
        }
    }

    pub(crate) fn lease(&self) -> i64 {
        match self {
            Prior::Record(kv) => kv.lease,
            Prior::Stored { live, .. } => live.lease,
        }
    }

    /// The whole record of `key`, read from history if it was not yet. History keeps it at
    /// least until the entry that replaced it is applied: the compactor cannot run meanwhile.
    pub(crate) fn into_kv(self, tree: &sled::Tree, key: &[u8]) -> Result<KeyValue, StoreError> {
        match self {
            Prior::Record(kv) => Ok(kv),
            Prior::Stored { version, .. } => Ok(range::fetch(tree, version)?.into_kv(key.to_vec())),
        }
    }
}

/// The keys one entry changed, in op order, and the revision it created.
pub(crate) struct Written {
    pub revision: i64,
    pub changes: Vec<ChangedKey>,
}

impl Written {
    /// The revision's events, as [`read_events`] would replay them, except that only the keys
    /// `wants_prev` names carry their `prev_kv`; previous records of those not read yet are read
    /// from `tree`. Also returns how many were.
    pub(crate) fn into_events(
        self,
        tree: &sled::Tree,
        wants_prev: impl Fn(&[u8]) -> bool,
    ) -> Result<(RevisionEvents, u64), StoreError> {
        let revision = self.revision;
        let mut events = Vec::with_capacity(self.changes.len());
        let mut reads = 0;
        for c in self.changes {
            let prev_kv = match c.before {
                Some(prior) if wants_prev(&c.key) => {
                    reads += u64::from(matches!(prior, Prior::Stored { .. }));
                    Some(prior.into_kv(tree, &c.key)?)
                }
                _ => None,
            };
            events.push(event(revision, c.key, c.after, prev_kv));
        }
        Ok((RevisionEvents { revision, events }, reads))
    }
}

/// The event of `key` becoming `after` (a put) or disappearing (`None`, a delete) at `revision`.
fn event(
    revision: i64,
    key: Vec<u8>,
    after: Option<KeyRecord>,
    prev_kv: Option<KeyValue>,
) -> Event {
    match after {
        Some(record) => Event {
            kind: EventKind::Put,
            kv: record.into_kv(key),
            prev_kv,
        },
        None => Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                mod_revision: revision,
                ..KeyValue::default()
            },
            prev_kv,
        },
    }
}

impl MvccCore {
    /// Replays the events of revisions `[start, end]` on the keys in etcd's `(key, range_end)`;
    /// see [`crate::Mvcc::events`].
    pub(crate) fn events(
        &self,
        start: i64,
        end: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
    ) -> Result<(Vec<RevisionEvents>, i64), MvccError> {
        let state = self.read_state();
        read_events(
            &self.tree(),
            &state,
            start,
            end,
            &KeyRange::new(key, range_end),
            max_events,
        )
    }
}

/// [`MvccCore::events`] on `tree`, described by `state`.
fn read_events(
    tree: &sled::Tree,
    state: &MvccState,
    start: i64,
    end: i64,
    range: &KeyRange,
    max_events: usize,
) -> Result<(Vec<RevisionEvents>, i64), MvccError> {
    if state.compact_revision > 0 && start < state.compact_revision {
        return Err(ApplyError::Compacted.into());
    }
    let end = end.min(state.revision);
    let start = start.max(1);
    if start > end {
        return Ok((Vec::new(), end));
    }
    let bounds = (
        Bound::Included(codec::history_key_start(start)),
        Bound::Excluded(codec::history_key_start(end + 1)),
    );
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut gathering = RevisionEvents {
        revision: start,
        events: Vec::new(),
    };
    for item in tree.range(bounds) {
        let (k, v) = item?;
        let (revision, _) = codec::split_history_key(&k)?;
        if revision != gathering.revision {
            // Every change of `gathering.revision` has been seen: it is complete.
            let done = gathering.revision;
            let finished = std::mem::replace(
                &mut gathering,
                RevisionEvents {
                    revision,
                    events: Vec::new(),
                },
            );
            if !finished.events.is_empty() {
                total += finished.events.len();
                out.push(finished);
                if max_events > 0 && total >= max_events {
                    return Ok((out, done));
                }
            }
        }
        let version = codec::history_value(&v)?;
        let compacted_delete = version.record.is_none() && revision == state.compact_revision;
        if range.contains(version.key) && !compacted_delete {
            let after = version.decode_record()?;
            let key = version.key.to_vec();
            // As etcd's: no previous version is read below the compact revision, even one the
            // background compaction has not removed yet.
            let prev_kv = if revision > state.compact_revision {
                version_before(tree, state, &key, revision)?
            } else {
                None
            };
            gathering.events.push(event(revision, key, after, prev_kv));
        }
    }
    if !gathering.events.is_empty() {
        out.push(gathering);
    }
    Ok((out, end))
}

/// The live version of `key` just before `revision`, if history still has one.
fn version_before(
    tree: &sled::Tree,
    state: &MvccState,
    key: &[u8],
    revision: i64,
) -> Result<Option<KeyValue>, StoreError> {
    match state.index.before(key, revision) {
        Some(version) if !version.tombstone => {
            Ok(Some(range::fetch(tree, version)?.into_kv(key.to_vec())))
        }
        _ => Ok(None), // never put, or deleted before `revision`
    }
}
