//! The auth store (etcd's `auth/store.go` and `auth/range_perm_cache.go`): users, roles and
//! their permissions, whether authentication is on, and the auth revision, which every change
//! raises. Kept in the MVCC tree as meta pairs, so it survives restarts and travels in snapshots
//! and backups, and changed only by applying a [`Command::Auth`], so every member holds the same
//! store at the same log index.
//!
//! Its pairs (see the layout table in `codec`): `mauth` holds [`AuthMeta`]; `mauthuser/<name>`
//! one [`AuthUser`]; `mauthrole/<name>` one [`AuthRole`]. Passwords are only ever bcrypt
//! hashes, made by the member that took the request before it proposed the change.
//!
//! The checks are here too, so that the server (before a request is proposed or a read served)
//! and the applier (for a [`Command::AsUser`], against the store as it is when the entry is
//! applied) decide alike: [`AuthState::check_command`], [`AuthState::check_range`] and
//! [`AuthState::check_admin`]. They hold only while authentication is on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, META_AUTH, META_AUTH_ROLE_PREFIX, META_AUTH_USER_PREFIX};
use crate::error::StoreError;
use crate::redo::WriteBatch;
use crate::types::{
    ApplyError, AuthCommand, Command, Permission, PermissionKind, RequestOp, TxnRequest,
};

/// The user that `AuthEnable` requires, and the role that gives a user every permission.
pub const ROOT: &str = "root";

/// Whether authentication is on, the auth revision, and the key of the tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthMeta {
    pub enabled: bool,
    /// Raised by every change of the auth store (etcd's `authRevision`); 1 for a store never
    /// changed.
    pub revision: u64,
    /// The key every member signs and checks tokens with, drawn anew by each `AuthEnable`
    /// (so turning authentication off and on voids every token, as etcd's token provider
    /// does); empty while authentication has never been on.
    #[serde(with = "serde_bytes")]
    pub token_key: Vec<u8>,
}

/// The auth store's meta pair `value` without the token key, for a backup: with the key and
/// the users' password hashes, anyone holding the file could make tokens that the cluster
/// accepts. `None` for every other pair.
pub(crate) fn without_token_key(key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    if key != META_AUTH {
        return Ok(None);
    }
    let meta: AuthMeta = codec::decode("auth meta", value)?;
    let redacted = AuthMeta {
        token_key: Vec::new(),
        ..meta
    };
    codec::encode("auth meta", &redacted).map(Some)
}

/// The auth store's meta pair `value` with a token key drawn anew, for a restore: the restored
/// cluster accepts no token made with the key of the cluster the backup came from (a backup
/// holds none, but one written before backups left it out does). `None` for every other pair.
pub(crate) fn with_new_token_key(key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    if key != META_AUTH {
        return Ok(None);
    }
    let meta: AuthMeta = codec::decode("auth meta", value)?;
    let fresh = AuthMeta {
        token_key: rand::random::<[u8; 32]>().to_vec(),
        ..meta
    };
    codec::encode("auth meta", &fresh).map(Some)
}

/// One user as the auth store keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthUser {
    /// The bcrypt hash of its password; `None` for a user added without one, who cannot
    /// authenticate with a password.
    pub password: Option<String>,
    /// The roles granted to it, sorted.
    pub roles: Vec<String>,
}

/// One role as the auth store keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRole {
    /// Its permissions, sorted by key (etcd's order), at most one per `(key, range_end)`.
    pub permissions: Vec<Permission>,
}

/// The whole auth store, as of the last entry applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthState {
    pub meta: AuthMeta,
    pub users: BTreeMap<String, AuthUser>,
    pub roles: BTreeMap<String, AuthRole>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            meta: AuthMeta {
                enabled: false,
                revision: 1,
                token_key: Vec::new(),
            },
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// What an operation needs of a range of keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl AuthState {
    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        self.meta.enabled
    }

    /// The auth revision.
    pub fn revision(&self) -> u64 {
        self.meta.revision
    }

    /// Reads one meta pair of the auth store into `self`; false if `key` is not one of its.
    pub(crate) fn read_pair(&mut self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        if key == META_AUTH {
            self.meta = codec::decode("auth meta", value)?;
        } else if let Some(name) = key.strip_prefix(META_AUTH_USER_PREFIX) {
            let user = codec::decode("auth user", value)?;
            self.users.insert(name_of(name)?, user);
        } else if let Some(name) = key.strip_prefix(META_AUTH_ROLE_PREFIX) {
            let role = codec::decode("auth role", value)?;
            self.roles.insert(name_of(name)?, role);
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether `user` holds the root role.
    fn is_root(user: &AuthUser) -> bool {
        user.roles.iter().any(|r| r == ROOT)
    }

    /// etcd's `IsAdminPermitted`: with authentication on, only a user with the root role.
    pub fn check_admin(&self, user: &str) -> Result<(), ApplyError> {
        if !self.enabled() {
            return Ok(());
        }
        if user.is_empty() {
            return Err(ApplyError::UserEmpty);
        }
        match self.users.get(user) {
            None => Err(ApplyError::UserNotFound),
            Some(u) if Self::is_root(u) => Ok(()),
            Some(_) => Err(ApplyError::PermissionDenied),
        }
    }

    /// Whether `user` holds role `role` (etcd's `HasRole`).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// etcd's `isOpPermitted`: whether `user` may `access` every key of `[key, range_end)`
    /// (`range_end` as in a request: empty for `key` alone, `[0]` for every key from `key`).
    pub fn check_range(
        &self,
        user: &str,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), ApplyError> {
        if !self.enabled() {
            return Ok(());
        }
        if user.is_empty() {
            return Err(ApplyError::UserEmpty);
        }
        let Some(u) = self.users.get(user) else {
            return Err(ApplyError::PermissionDenied);
        };
        if Self::is_root(u) {
            return Ok(());
        }
        let granted: Vec<Interval> = u
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .flat_map(|role| &role.permissions)
            .filter(|p| match access {
                Access::Read => p.kind != PermissionKind::Write,
                Access::Write => p.kind != PermissionKind::Read,
            })
            .map(|p| Interval::of_permission(&p.key, &p.range_end))
            .collect();
        if covers(granted, &Interval::of_request(key, range_end)) {
            Ok(())
        } else {
            Err(ApplyError::PermissionDenied)
        }
    }

    /// Whether `user` may have `command` applied (etcd's `authApplierV3`): puts and deletes need
    /// write access to their keys (and read access when they return previous values), a txn
    /// read access to every compare and each op's access on both branches (nested txns
    /// included), a revoke write access to every key of the lease (`lease_keys`), as does a put
    /// that attaches a key to a lease; auth changes need the root role. Other commands are not
    /// checked (etcd checks no lease grant or compaction).
    pub fn check_command(
        &self,
        user: &str,
        command: &Command,
        lease_keys: &dyn Fn(i64) -> Result<Vec<Vec<u8>>, StoreError>,
    ) -> Result<Result<(), ApplyError>, StoreError> {
        if !self.enabled() {
            return Ok(Ok(()));
        }
        let leased = |lease: i64| -> Result<Result<(), ApplyError>, StoreError> {
            if lease == 0 {
                return Ok(Ok(()));
            }
            for key in lease_keys(lease)? {
                if let Err(e) = self.check_range(user, Access::Write, &key, &[]) {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(()))
        };
        Ok(match command {
            Command::Put(put) => match self.check_range(user, Access::Write, &put.key, &[]) {
                Ok(()) => match leased(put.lease)? {
                    Ok(()) if put.prev_kv => self.check_range(user, Access::Read, &put.key, &[]),
                    other => other,
                },
                Err(e) => Err(e),
            },
            Command::DeleteRange(d) => self
                .check_range(user, Access::Write, &d.key, &d.range_end)
                .and_then(|()| match d.prev_kv {
                    true => self.check_range(user, Access::Read, &d.key, &d.range_end),
                    false => Ok(()),
                }),
            Command::Txn(txn) => self.check_txn(user, txn),
            Command::LeaseRevoke { id } => leased(*id)?,
            Command::Auth(_) => self.check_admin(user),
            _ => Ok(()),
        })
    }

    /// The refusal of a client's `command` that reaches the applier without a user
    /// ([`Command::AsUser`]) while authentication is on: puts, deletes and txns come only from
    /// clients, and such one was proposed by a member that had not yet applied the
    /// `AuthEnable` (etcd refuses it as made by the empty user). The member's own commands
    /// (lease revokes of expired leases, compactions, alarms) are never refused.
    pub fn refusal_without_user(&self, command: &Command) -> Option<ApplyError> {
        let from_client = matches!(
            command,
            Command::Put(_) | Command::DeleteRange(_) | Command::Txn(_)
        );
        (self.enabled() && from_client).then_some(ApplyError::UserEmpty)
    }

    /// etcd's `checkTxnAuth`, with nested txns checked as well.
    pub fn check_txn(&self, user: &str, txn: &TxnRequest) -> Result<(), ApplyError> {
        for compare in &txn.compare {
            self.check_range(user, Access::Read, &compare.key, &compare.range_end)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(r) => {
                    self.check_range(user, Access::Read, &r.key, &r.range_end)?
                }
                RequestOp::Put(p) => {
                    self.check_range(user, Access::Write, &p.key, &[])?;
                    if p.prev_kv {
                        self.check_range(user, Access::Read, &p.key, &[])?;
                    }
                }
                RequestOp::DeleteRange(d) => {
                    if d.prev_kv {
                        self.check_range(user, Access::Read, &d.key, &d.range_end)?;
                    }
                    self.check_range(user, Access::Write, &d.key, &d.range_end)?;
                }
                RequestOp::Txn(nested) => self.check_txn(user, nested)?,
            }
        }
        Ok(())
    }

    /// The store after `command`, with etcd's rules and refusals, or why it is refused. Every
    /// change raises the revision (a grant of a role already granted changes nothing).
    pub fn after(&self, command: &AuthCommand) -> Result<AuthState, ApplyError> {
        let mut next = self.clone();
        let enabled = self.enabled();
        let changed = match command {
            AuthCommand::Enable { token_key } => {
                if enabled {
                    return Ok(next);
                }
                match self.users.get(ROOT) {
                    None => return Err(ApplyError::RootUserNotExist),
                    Some(root) if !Self::is_root(root) => return Err(ApplyError::RootRoleNotExist),
                    Some(_) => {}
                }
                next.meta.enabled = true;
                // etcd's enable does not raise the revision.
                next.meta.token_key = token_key.clone();
                return Ok(next);
            }
            AuthCommand::Disable => {
                if !enabled {
                    return Ok(next);
                }
                next.meta.enabled = false;
                true
            }
            AuthCommand::UserAdd { name, password } => {
                if name.is_empty() {
                    return Err(ApplyError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(ApplyError::UserAlreadyExists);
                }
                next.users.insert(
                    name.clone(),
                    AuthUser {
                        password: password.clone(),
                        roles: Vec::new(),
                    },
                );
                true
            }
            AuthCommand::UserDelete { name } => {
                if enabled && name == ROOT {
                    return Err(ApplyError::InvalidAuthManagement);
                }
                next.users.remove(name).ok_or(ApplyError::UserNotFound)?;
                true
            }
            AuthCommand::UserChangePassword { name, password } => {
                let user = next.users.get_mut(name).ok_or(ApplyError::UserNotFound)?;
                // A user added without a password keeps being one (etcd keeps its options).
                if user.password.is_some() {
                    user.password = Some(password.clone());
                }
                true
            }
            AuthCommand::UserGrantRole { user, role } => {
                let u = next.users.get_mut(user).ok_or(ApplyError::UserNotFound)?;
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(ApplyError::RoleNotFound);
                }
                match u.roles.binary_search(role) {
                    Ok(_) => false,
                    Err(at) => {
                        u.roles.insert(at, role.clone());
                        true
                    }
                }
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if enabled && user == ROOT && role == ROOT {
                    return Err(ApplyError::InvalidAuthManagement);
                }
                let u = next.users.get_mut(user).ok_or(ApplyError::UserNotFound)?;
                let before = u.roles.len();
                u.roles.retain(|r| r != role);
                if u.roles.len() == before {
                    return Err(ApplyError::RoleNotGranted);
                }
                true
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(ApplyError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(ApplyError::RoleAlreadyExists);
                }
                next.roles.insert(name.clone(), AuthRole::default());
                true
            }
            AuthCommand::RoleDelete { name } => {
                if enabled && name == ROOT {
                    return Err(ApplyError::InvalidAuthManagement);
                }
                next.roles.remove(name).ok_or(ApplyError::RoleNotFound)?;
                for user in next.users.values_mut() {
                    user.roles.retain(|r| r != name);
                }
                true
            }
            AuthCommand::RoleGrantPermission { role, permission } => {
                let r = next.roles.get_mut(role).ok_or(ApplyError::RoleNotFound)?;
                match r
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == permission.key && p.range_end == permission.range_end)
                {
                    Some(existing) => existing.kind = permission.kind,
                    None => {
                        r.permissions.push(permission.clone());
                        // Stable: permissions of one key keep their order of grant, as etcd's.
                        r.permissions.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                true
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = next.roles.get_mut(role).ok_or(ApplyError::RoleNotFound)?;
                let before = r.permissions.len();
                r.permissions
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if r.permissions.len() == before {
                    return Err(ApplyError::PermissionNotGranted);
                }
                true
            }
        };
        if changed {
            next.meta.revision += 1;
        }
        Ok(next)
    }

    /// Stages into `batch` the pairs that turn the stored `self` into `next`.
    pub(crate) fn stage(&self, next: &AuthState, batch: &mut WriteBatch) -> Result<(), StoreError> {
        if next.meta != self.meta {
            batch.insert(META_AUTH, codec::encode("auth meta", &next.meta)?);
        }
        for name in self.users.keys().filter(|n| !next.users.contains_key(*n)) {
            batch.remove(pair_key(META_AUTH_USER_PREFIX, name));
        }
        for (name, user) in &next.users {
            if self.users.get(name) != Some(user) {
                let key = pair_key(META_AUTH_USER_PREFIX, name);
                batch.insert(key, codec::encode("auth user", user)?);
            }
        }
        for name in self.roles.keys().filter(|n| !next.roles.contains_key(*n)) {
            batch.remove(pair_key(META_AUTH_ROLE_PREFIX, name));
        }
        for (name, role) in &next.roles {
            if self.roles.get(name) != Some(role) {
                let key = pair_key(META_AUTH_ROLE_PREFIX, name);
                batch.insert(key, codec::encode("auth role", role)?);
            }
        }
        Ok(())
    }
}

/// The tree key of user or role `name` under `prefix`.
fn pair_key(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// A user's or role's name from its tree key.
fn name_of(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StoreError::corrupt("auth store", "a user or role name is not UTF-8"))
}

/// A half-open interval of keys, `[begin, end)`; `end` `None` is unbounded (etcd's
/// `adt.BytesAffineInterval`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// The keys a permission names: `key` alone (`[key, key\0)`) for an empty `range_end`,
    /// every key from `key` for `[0]`.
    fn of_permission(key: &[u8], range_end: &[u8]) -> Interval {
        Interval::of_request(key, range_end)
    }

    /// The keys a request's `(key, range_end)` names, as etcd's `checkKeyPoint` and
    /// `checkKeyInterval` see them.
    fn of_request(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut point_end = key.to_vec();
                point_end.push(0);
                Some(point_end)
            }
            [0] => None,
            end => Some(end.to_vec()),
        };
        Interval {
            begin: key.to_vec(),
            end,
        }
    }
}

/// Whether the union of `granted` covers every key of `wanted` (etcd's `IntervalTree.Contains`
/// for a range, `Intersects` for a single key, which is the same question for `[key, key\0)`).
/// An empty `wanted` (`end <= begin`) is covered by nothing, as in etcd.
fn covers(mut granted: Vec<Interval>, wanted: &Interval) -> bool {
    if let Some(end) = &wanted.end {
        if *end <= wanted.begin {
            return false;
        }
    }
    granted.sort_by(|a, b| a.begin.cmp(&b.begin));
    let mut reached = wanted.begin.clone();
    for interval in &granted {
        if interval.begin > reached {
            // A gap before this interval (and every later one starts later still).
            return false;
        }
        match &interval.end {
            None => return true,
            Some(end) if *end > reached => reached = end.clone(),
            Some(_) => {}
        }
        if wanted.end.as_ref().is_some_and(|end| reached >= *end) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DeleteRangeRequest, PutRequest, RangeRequest};

    fn perm(kind: PermissionKind, key: &str, range_end: &str) -> Permission {
        Permission {
            kind,
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
        }
    }

    /// A store with authentication on, root, and user `u` with role `r` holding `perms`.
    fn store_with(perms: &[Permission]) -> AuthState {
        let mut s = AuthState::default();
        let steps = [
            AuthCommand::UserAdd {
                name: ROOT.into(),
                password: Some("h".into()),
            },
            AuthCommand::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthCommand::UserAdd {
                name: "u".into(),
                password: Some("h".into()),
            },
            AuthCommand::RoleAdd { name: "r".into() },
            AuthCommand::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
            AuthCommand::Enable {
                token_key: b"key".to_vec(),
            },
        ];
        for step in steps {
            s = s.after(&step).unwrap();
        }
        for p in perms {
            s = s
                .after(&AuthCommand::RoleGrantPermission {
                    role: "r".into(),
                    permission: p.clone(),
                })
                .unwrap();
        }
        s
    }

    fn read(s: &AuthState, key: &str, end: &str) -> Result<(), ApplyError> {
        s.check_range("u", Access::Read, key.as_bytes(), end.as_bytes())
    }

    fn write(s: &AuthState, key: &str, end: &str) -> Result<(), ApplyError> {
        s.check_range("u", Access::Write, key.as_bytes(), end.as_bytes())
    }

    #[test]
    fn a_single_key_permission_covers_that_key_only() {
        let s = store_with(&[perm(PermissionKind::Read, "foo", "")]);
        assert_eq!(read(&s, "foo", ""), Ok(()));
        assert_eq!(read(&s, "foo", "foo\0"), Ok(()));
        assert_eq!(read(&s, "foo1", ""), Err(ApplyError::PermissionDenied));
        assert_eq!(read(&s, "foo", "fop"), Err(ApplyError::PermissionDenied));
        assert_eq!(write(&s, "foo", ""), Err(ApplyError::PermissionDenied));
    }

    #[test]
    fn a_prefix_permission_covers_ranges_inside_it_only() {
        let s = store_with(&[perm(PermissionKind::ReadWrite, "dir/", "dir0")]);
        for (key, end) in [("dir/", "dir0"), ("dir/a", ""), ("dir/a", "dir/b")] {
            assert_eq!(read(&s, key, end), Ok(()), "{key}..{end}");
            assert_eq!(write(&s, key, end), Ok(()), "{key}..{end}");
        }
        for (key, end) in [("dir", ""), ("dir/", "dir1"), ("dir/a", "\0"), ("a", "z")] {
            assert_eq!(read(&s, key, end), Err(ApplyError::PermissionDenied));
        }
    }

    #[test]
    fn adjacent_permissions_join_and_from_key_is_unbounded() {
        let s = store_with(&[
            perm(PermissionKind::Read, "a", "c"),
            perm(PermissionKind::ReadWrite, "c", "e"),
            perm(PermissionKind::Write, "x", "\0"),
        ]);
        assert_eq!(read(&s, "a", "e"), Ok(()));
        assert_eq!(read(&s, "b", "d"), Ok(()));
        assert_eq!(read(&s, "a", "f"), Err(ApplyError::PermissionDenied));
        assert_eq!(write(&s, "c", "e"), Ok(()));
        assert_eq!(write(&s, "b", "e"), Err(ApplyError::PermissionDenied));
        assert_eq!(write(&s, "x", "\0"), Ok(()));
        assert_eq!(write(&s, "zzz", ""), Ok(()));
        assert_eq!(read(&s, "x", ""), Err(ApplyError::PermissionDenied));
        // An empty range is granted by nothing, as in etcd.
        assert_eq!(read(&s, "b", "a"), Err(ApplyError::PermissionDenied));
    }

    #[test]
    fn root_may_do_anything_and_strangers_nothing() {
        let s = store_with(&[]);
        assert_eq!(s.check_range(ROOT, Access::Write, b"\0", b"\0"), Ok(()));
        assert_eq!(s.check_admin(ROOT), Ok(()));
        assert_eq!(s.check_admin("u"), Err(ApplyError::PermissionDenied));
        assert_eq!(s.check_admin("nobody"), Err(ApplyError::UserNotFound));
        assert_eq!(s.check_admin(""), Err(ApplyError::UserEmpty));
        assert_eq!(
            s.check_range("nobody", Access::Read, b"a", b""),
            Err(ApplyError::PermissionDenied)
        );
        assert_eq!(
            s.check_range("", Access::Read, b"a", b""),
            Err(ApplyError::UserEmpty)
        );
        let off = s.after(&AuthCommand::Disable).unwrap();
        assert_eq!(off.check_range("", Access::Write, b"a", b""), Ok(()));
        assert_eq!(off.check_admin(""), Ok(()));
    }

    #[test]
    fn commands_are_checked_per_operation() {
        let s = store_with(&[
            perm(PermissionKind::ReadWrite, "rw", ""),
            perm(PermissionKind::Write, "w", ""),
        ]);
        let no_leases = |_| Ok(Vec::new());
        let check = |c: &Command| s.check_command("u", c, &no_leases).unwrap();
        let put = |key: &str, prev_kv: bool| {
            Command::Put(PutRequest {
                key: key.into(),
                prev_kv,
                ..Default::default()
            })
        };
        assert_eq!(check(&put("w", false)), Ok(()));
        assert_eq!(check(&put("w", true)), Err(ApplyError::PermissionDenied));
        assert_eq!(check(&put("rw", true)), Ok(()));
        let delete = Command::DeleteRange(DeleteRangeRequest {
            key: b"w".to_vec(),
            ..Default::default()
        });
        assert_eq!(check(&delete), Ok(()));
        let txn = |op: RequestOp| {
            Command::Txn(TxnRequest {
                compare: vec![],
                success: vec![],
                failure: vec![RequestOp::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![op],
                    failure: vec![],
                })],
            })
        };
        let range = |key: &str| {
            RequestOp::Range(RangeRequest {
                key: key.into(),
                ..Default::default()
            })
        };
        assert_eq!(check(&txn(range("rw"))), Ok(()));
        assert_eq!(check(&txn(range("w"))), Err(ApplyError::PermissionDenied));
        let leased = |_| Ok(vec![b"w".to_vec(), b"other".to_vec()]);
        assert_eq!(
            s.check_command("u", &Command::LeaseRevoke { id: 1 }, &leased)
                .unwrap(),
            Err(ApplyError::PermissionDenied)
        );
        assert_eq!(
            check(&Command::Auth(AuthCommand::Disable)),
            Err(ApplyError::PermissionDenied)
        );
    }

    #[test]
    fn etcds_rules_for_users_and_roles() {
        let s = AuthState::default();
        assert_eq!(
            s.after(&AuthCommand::Enable {
                token_key: b"key".to_vec()
            }),
            Err(ApplyError::RootUserNotExist)
        );
        let s = s
            .after(&AuthCommand::UserAdd {
                name: ROOT.into(),
                password: None,
            })
            .unwrap();
        assert_eq!(
            s.after(&AuthCommand::Enable {
                token_key: b"key".to_vec()
            }),
            Err(ApplyError::RootRoleNotExist)
        );
        let s = store_with(&[]);
        let revision = s.revision();
        for (command, refused) in [
            (
                AuthCommand::UserDelete { name: ROOT.into() },
                ApplyError::InvalidAuthManagement,
            ),
            (
                AuthCommand::RoleDelete { name: ROOT.into() },
                ApplyError::InvalidAuthManagement,
            ),
            (
                AuthCommand::UserRevokeRole {
                    user: ROOT.into(),
                    role: ROOT.into(),
                },
                ApplyError::InvalidAuthManagement,
            ),
            (
                AuthCommand::UserAdd {
                    name: "u".into(),
                    password: None,
                },
                ApplyError::UserAlreadyExists,
            ),
            (
                AuthCommand::UserAdd {
                    name: "".into(),
                    password: None,
                },
                ApplyError::UserEmpty,
            ),
            (
                AuthCommand::RoleAdd { name: "r".into() },
                ApplyError::RoleAlreadyExists,
            ),
            (
                AuthCommand::UserGrantRole {
                    user: "u".into(),
                    role: "nope".into(),
                },
                ApplyError::RoleNotFound,
            ),
            (
                AuthCommand::UserRevokeRole {
                    user: "u".into(),
                    role: "nope".into(),
                },
                ApplyError::RoleNotGranted,
            ),
            (
                AuthCommand::RoleRevokePermission {
                    role: "r".into(),
                    key: b"k".to_vec(),
                    range_end: vec![],
                },
                ApplyError::PermissionNotGranted,
            ),
            (
                AuthCommand::UserDelete { name: "x".into() },
                ApplyError::UserNotFound,
            ),
        ] {
            assert_eq!(s.after(&command), Err(refused), "{command:?}");
        }
        // Deleting a role takes it from its users.
        let s2 = s
            .after(&AuthCommand::RoleDelete { name: "r".into() })
            .unwrap();
        assert!(s2.users["u"].roles.is_empty());
        assert_eq!(s2.revision(), revision + 1);
        // A disable then an enable draws a new token key.
        let again = s
            .after(&AuthCommand::Disable)
            .unwrap()
            .after(&AuthCommand::Enable {
                token_key: b"key2".to_vec(),
            })
            .unwrap();
        assert_ne!(again.meta.token_key, s.meta.token_key);
    }

    /// The commands that set up [`store_with`]'s store, with `perms`, as log entries.
    fn setup_commands(perms: &[Permission]) -> Vec<Command> {
        let mut commands: Vec<Command> = [
            AuthCommand::UserAdd {
                name: ROOT.into(),
                password: Some("h".into()),
            },
            AuthCommand::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthCommand::UserAdd {
                name: "u".into(),
                password: Some("h".into()),
            },
            AuthCommand::RoleAdd { name: "r".into() },
            AuthCommand::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
        ]
        .into_iter()
        .map(Command::Auth)
        .collect();
        commands.push(Command::Auth(AuthCommand::Enable {
            token_key: b"key".to_vec(),
        }));
        for p in perms {
            commands.push(Command::Auth(AuthCommand::RoleGrantPermission {
                role: "r".into(),
                permission: p.clone(),
            }));
        }
        commands
    }

    fn as_user(user: &str, command: Command) -> Command {
        Command::AsUser {
            user: user.into(),
            command: Box::new(command),
        }
    }

    #[test]
    fn the_store_is_applied_kept_across_a_reopen_and_carried_by_snapshots() {
        use crate::test_support::{entry, installed_copy, put_cmd};
        use crate::types::CommandResult;
        let (dir, other) = (
            tempfile::TempDir::new().unwrap(),
            tempfile::TempDir::new().unwrap(),
        );
        let expected = store_with(&[perm(PermissionKind::ReadWrite, "a", "")]);
        let mut index = 0;
        {
            let store = crate::Store::open(dir.path()).unwrap();
            let core = store.core_for_tests();
            for command in setup_commands(&[perm(PermissionKind::ReadWrite, "a", "")]) {
                index += 1;
                let applied = core.apply_entry(&entry(index, command)).unwrap();
                assert!(
                    matches!(applied.result, Ok(CommandResult::Auth { .. })),
                    "{applied:?}"
                );
            }
            assert_eq!(*store.mvcc().auth(), expected);
            // A refused change changes nothing.
            index += 1;
            let refused = core
                .apply_entry(&entry(
                    index,
                    Command::Auth(AuthCommand::RoleAdd { name: "r".into() }),
                ))
                .unwrap();
            assert_eq!(refused.result, Err(ApplyError::RoleAlreadyExists));
            store.flush().unwrap();
        }
        let store = crate::Store::open(dir.path()).unwrap();
        assert_eq!(*store.mvcc().auth(), expected);
        let core = store.core_for_tests();
        index += 1;
        core.apply_entry(&entry(index, put_cmd("k", "v"))).unwrap();
        let installed = installed_copy(&store, other.path());
        assert_eq!(*installed.mvcc().auth(), expected);
    }

    #[test]
    fn a_users_command_is_checked_against_the_store_as_it_is_when_applied() {
        use crate::test_support::{entry, put_cmd};
        let dir = tempfile::TempDir::new().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        let mut index = 0;
        let mut apply = |command: Command| {
            index += 1;
            core.apply_entry(&entry(index, command)).unwrap().result
        };
        for command in setup_commands(&[perm(PermissionKind::ReadWrite, "a", "")]) {
            apply(command).unwrap();
        }
        assert!(apply(as_user("u", put_cmd("a", "1"))).is_ok());
        // A client's write without a user (from a member that had not applied the enable yet)
        // is refused, alone or in a run of puts; the member's own commands are not.
        assert_eq!(apply(put_cmd("a", "0")), Err(ApplyError::UserEmpty));
        let run = apply(Command::Batch(vec![put_cmd("a", "0"), put_cmd("b", "0")]));
        let Ok(crate::types::CommandResult::Batch(parts)) = run else {
            panic!("a batch answers with a batch: {run:?}");
        };
        assert!(parts.iter().all(|p| p.result == Err(ApplyError::UserEmpty)));
        assert!(apply(Command::LeaseGrant { id: 5, ttl: 60 }).is_ok());
        assert!(apply(Command::LeaseRevoke { id: 5 }).is_ok());
        // An anonymous client's revoke carries the empty user (taken while authentication
        // was off, applied after it was turned on): refused for a lease with keys.
        assert!(apply(Command::LeaseGrant { id: 6, ttl: 60 }).is_ok());
        let leased_put = crate::test_support::leased_put_cmd("leased", "1", 6);
        assert!(apply(as_user(ROOT, leased_put)).is_ok());
        assert_eq!(
            apply(as_user("", Command::LeaseRevoke { id: 6 })),
            Err(ApplyError::UserEmpty)
        );
        assert!(apply(as_user(ROOT, Command::LeaseRevoke { id: 6 })).is_ok());
        assert_eq!(
            apply(as_user("u", put_cmd("b", "1"))),
            Err(ApplyError::PermissionDenied)
        );
        assert_eq!(
            apply(as_user("", put_cmd("a", "1"))),
            Err(ApplyError::UserEmpty)
        );
        // Revoked after the request was checked: the entry is refused when applied.
        apply(Command::Auth(AuthCommand::RoleRevokePermission {
            role: "r".into(),
            key: b"a".to_vec(),
            range_end: Vec::new(),
        }))
        .unwrap();
        assert_eq!(
            apply(as_user("u", put_cmd("a", "2"))),
            Err(ApplyError::PermissionDenied)
        );
        // Only root changes the store; a nested user command is refused.
        assert_eq!(
            apply(as_user(
                "u",
                Command::Auth(AuthCommand::RoleAdd { name: "x".into() })
            )),
            Err(ApplyError::PermissionDenied)
        );
        assert!(apply(as_user(
            ROOT,
            Command::Auth(AuthCommand::RoleAdd { name: "x".into() })
        ))
        .is_ok());
        assert_eq!(
            apply(as_user(ROOT, as_user(ROOT, put_cmd("a", "3")))),
            Err(ApplyError::NestedUser)
        );
        // Nothing refused was written: "a" holds its first value only.
        let range = crate::types::RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        };
        let (found, _) = store.mvcc().try_range(&range).unwrap();
        assert_eq!(found.kvs.len(), 1);
        assert_eq!(found.kvs[0].value, b"1");
        assert_eq!(found.kvs[0].version, 1);
    }

    #[test]
    fn a_granted_permission_on_the_same_range_changes_its_kind() {
        let s = store_with(&[
            perm(PermissionKind::Read, "b", ""),
            perm(PermissionKind::Read, "a", "c"),
            perm(PermissionKind::Write, "b", ""),
        ]);
        let kinds: Vec<_> = s.roles["r"]
            .permissions
            .iter()
            .map(|p| (String::from_utf8_lossy(&p.key).into_owned(), p.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a".to_string(), PermissionKind::Read),
                ("b".to_string(), PermissionKind::Write)
            ]
        );
    }
}
