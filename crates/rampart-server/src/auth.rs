//! Authentication on a member (etcd's simple token provider, `auth/simple_token.go`, and the
//! password half of `auth/store.go`): who a call is from ([`Caller`]), the tokens this member
//! issued, and the bcrypt hashing and checking of passwords.
//!
//! The auth store itself (users, roles, permissions, whether authentication is on, the key of
//! the tokens) is replicated state: `rampart_storage::AuthState`, changed only through Raft.
//! Tokens are signed with the store's key, so any member checks a token another issued (see
//! [`Authenticator`]); only when each token was last used is kept, per member, in memory.
//!
//! Passwords are hashed here, on the member that takes the request, before the change is
//! proposed: no plaintext password enters the Raft log.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rampart_storage::{AuthState, Command};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::ServerError;

/// The metadata key of a token (etcd's `rpctypes.TokenFieldNameGRPC`).
pub const TOKEN_KEY: &str = "token";

/// The other metadata key etcd reads a token from (`TokenFieldNameSwagger`): the JSON
/// gateway's `Authorization` header.
pub const AUTHORIZATION_KEY: &str = "authorization";

/// Length of the random part of a simple token (etcd's `defaultSimpleTokenLength`).
const TOKEN_LENGTH: usize = 16;

/// Who a call is from, as the interceptor decided from its credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// This member itself (its lessor, compactor, in-process uses with no client behind them):
    /// nothing is checked.
    Trusted,
    /// A client that gave no credentials. With authentication on, only calls that need no
    /// user succeed (Authenticate, Status, the lease calls, ...); the others fail with "user
    /// name is empty".
    Anonymous,
    /// A client that authenticated as this user.
    User(String),
    /// A client whose token this member does not know (expired, voided, or issued by another
    /// member): every call that needs a user fails with "invalid auth token", upon which
    /// etcd's clients authenticate again; calls that need none go on, as etcd's.
    InvalidToken,
}

impl Caller {
    /// The caller of a gRPC call, set by the interceptor; a call that did not pass it is
    /// anonymous.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous)
    }

    /// The user name the checks see: empty for an anonymous caller, `None` for this member.
    pub fn user(&self) -> Result<Option<&str>, ServerError> {
        match self {
            Caller::Trusted => Ok(None),
            Caller::Anonymous => Ok(Some("")),
            Caller::User(name) => Ok(Some(name)),
            Caller::InvalidToken => Err(ServerError::InvalidAuthToken),
        }
    }

    /// `check` against `auth`, as this caller (a trusted one passes).
    pub fn check(
        &self,
        auth: &AuthState,
        check: impl FnOnce(&AuthState, &str) -> Result<(), rampart_storage::ApplyError>,
    ) -> Result<(), ServerError> {
        match self.user()? {
            None => Ok(()),
            Some(user) => check(auth, user).map_err(ServerError::from),
        }
    }

    /// `command` as this caller proposes it, under an auth store that is `enabled` or not: a
    /// user's command carries the user, so that the applier checks it again against the auth
    /// store as it is then; so does an anonymous one while authentication is on (as the empty
    /// user: a revoke of a lease without keys needs no user, one of a lease with keys does).
    /// With authentication off, an anonymous command goes as it is: the applier does not
    /// check it, even if authentication was turned on meanwhile.
    pub fn wrap(&self, command: Command, enabled: bool) -> Command {
        let user = match self {
            Caller::User(user) => user.clone(),
            Caller::Anonymous if enabled => String::new(),
            // An invalid token's calls are refused by [`Caller::check`] before they are
            // proposed.
            Caller::Trusted | Caller::Anonymous | Caller::InvalidToken => return command,
        };
        Command::AsUser {
            user,
            command: Box::new(command),
        }
    }

    /// An auth store change as this caller proposes it: always with the user (empty when
    /// anonymous), so that the applier refuses it if authentication was turned on meanwhile.
    pub fn wrap_admin(&self, command: Command) -> Result<Command, ServerError> {
        Ok(match self.user()? {
            None => command,
            Some(user) => Command::AsUser {
                user: user.to_string(),
                command: Box::new(command),
            },
        })
    }
}

/// The tokens members issue, checked by any member, and this member's password hashing.
///
/// A token is `random.issued.user.mac`: 16 random characters, the Unix second it was issued,
/// the user's name in hex, and an HMAC-SHA-256 (in hex) over those and the user's password
/// hash, keyed with the auth store's token key. Every member holds the key (it is replicated,
/// drawn anew by each `AuthEnable`), so a token issued by one member is good on all of them,
/// as etcd 3.4's simple tokens (which it replicates through Raft) are. It is void once the
/// user's password changes, the user goes, or authentication is turned off and on; and it
/// expires `--auth-token-ttl` after it was issued, or after its last use on the member
/// checking it, whichever is later.
pub struct Authenticator {
    /// When each token was last used on this member: a use renews it for `ttl` here.
    last_used: Mutex<HashMap<String, Instant>>,
    /// `--auth-token-ttl`.
    ttl: Duration,
    /// `--bcrypt-cost`.
    bcrypt_cost: u32,
}

impl Authenticator {
    pub fn new(ttl: Duration, bcrypt_cost: u32) -> Authenticator {
        Authenticator {
            last_used: Mutex::new(HashMap::new()),
            ttl,
            bcrypt_cost,
        }
    }

    /// The caller a call's `token` (if any) stands for, under `auth` as this member last
    /// applied it. With authentication off, tokens are not looked at.
    pub fn caller(&self, auth: &AuthState, token: Option<&str>) -> Caller {
        if !auth.enabled() {
            return Caller::Anonymous;
        }
        let Some(token) = token else {
            return Caller::Anonymous;
        };
        match self.check(auth, token) {
            Some(user) => Caller::User(user),
            None => {
                self.last_used.lock().remove(token);
                Caller::InvalidToken
            }
        }
    }

    /// The user of `token` if it is valid under `auth` and fresh; renews it.
    fn check(&self, auth: &AuthState, token: &str) -> Option<String> {
        let mut parts = token.split('.');
        let (random, issued, user, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let user = String::from_utf8(decode_hex(user)?).ok()?;
        let password = auth.users.get(&user)?.password.as_deref()?;
        let expected = token_mac(&auth.meta.token_key, &user, password, random, issued);
        if !equal_in_constant_time(&decode_hex(mac)?, &expected) {
            return None;
        }
        let issued: u64 = issued.parse().ok()?;
        let now = Instant::now();
        let mut last_used = self.last_used.lock();
        let fresh = unix_now().saturating_sub(issued) < self.ttl.as_secs()
            || last_used
                .get(token)
                .is_some_and(|used| now.duration_since(*used) < self.ttl);
        if !fresh {
            return None;
        }
        if !last_used.contains_key(token) {
            // Tokens not used for a TTL go when a new one comes, so they never pile up.
            let ttl = self.ttl;
            last_used.retain(|_, used| now.duration_since(*used) < ttl);
        }
        last_used.insert(token.to_string(), now);
        Some(user)
    }

    /// Issues a token for `user`, whose password hash is `password`, under `auth`.
    pub fn issue(&self, auth: &AuthState, user: &str, password: &str) -> String {
        let random: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(TOKEN_LENGTH)
            .map(char::from)
            .collect();
        let issued = unix_now().to_string();
        let mac = token_mac(&auth.meta.token_key, user, password, &random, &issued);
        format!(
            "{random}.{issued}.{}.{}",
            encode_hex(user.as_bytes()),
            encode_hex(&mac)
        )
    }

    /// The bcrypt hash of `password` at `--bcrypt-cost`, made off the async workers (it takes
    /// tens of milliseconds at the default cost).
    pub async fn hash(&self, password: String) -> Result<String, ServerError> {
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| ServerError::Internal(format!("password hashing failed: {e}")))?
            .map_err(|e| ServerError::Internal(format!("password hashing failed: {e}")))
    }

    /// Whether `password` matches bcrypt hash `hash`; a malformed hash matches nothing.
    pub async fn verify(&self, password: String, hash: String) -> bool {
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The MAC of a token's parts: HMAC-SHA-256 keyed with `key`, over each part with its length.
fn token_mac(key: &[u8], user: &str, password: &str, random: &str, issued: &str) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in [user, password, random, issued] {
        inner.update((part.len() as u64).to_be_bytes());
        inner.update(part.as_bytes());
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ.
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `bytes` in lowercase hex.
fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex `text`; `None` if it is not hex.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_storage::AuthCommand;

    fn enabled_store(key: &[u8]) -> AuthState {
        let mut s = AuthState::default();
        for step in [
            AuthCommand::UserAdd {
                name: "root".into(),
                password: Some("h1".into()),
            },
            AuthCommand::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
            AuthCommand::Enable {
                token_key: key.to_vec(),
            },
        ] {
            s = s.after(&step).unwrap();
        }
        s
    }

    #[test]
    fn tokens_name_their_user_on_every_member_until_voided() {
        let member = Authenticator::new(Duration::from_secs(60), 4);
        let other = Authenticator::new(Duration::from_secs(60), 4);
        let store = enabled_store(b"key");
        let token = member.issue(&store, "root", "h1");
        assert_eq!(token.split('.').next().unwrap().len(), TOKEN_LENGTH);
        for at in [&member, &other] {
            assert_eq!(at.caller(&store, Some(&token)), Caller::User("root".into()));
        }
        assert_eq!(member.caller(&store, None), Caller::Anonymous);
        for forged in [
            "nope.1",
            "a.1.726f6f74.00",
            &token.replace(".726f6f74.", ".616c696365."),
            &format!("{token}.more"),
        ] {
            assert_eq!(member.caller(&store, Some(forged)), Caller::InvalidToken);
        }
        // A changed password voids it.
        let changed = store
            .after(&AuthCommand::UserChangePassword {
                name: "root".into(),
                password: "h2".into(),
            })
            .unwrap();
        assert_eq!(member.caller(&changed, Some(&token)), Caller::InvalidToken);
        // So does turning authentication off and on (a new key).
        let cycled = store
            .after(&AuthCommand::Disable)
            .unwrap()
            .after(&AuthCommand::Enable {
                token_key: b"key2".to_vec(),
            })
            .unwrap();
        assert_eq!(member.caller(&cycled, Some(&token)), Caller::InvalidToken);
        // With authentication off, tokens are not looked at.
        let off = store.after(&AuthCommand::Disable).unwrap();
        assert_eq!(member.caller(&off, Some("nope")), Caller::Anonymous);
    }

    #[test]
    fn tokens_expire_unless_used() {
        let auth = Authenticator::new(Duration::ZERO, 4);
        let store = enabled_store(b"key");
        let token = auth.issue(&store, "root", "h1");
        assert_eq!(auth.caller(&store, Some(&token)), Caller::InvalidToken);
    }

    #[test]
    fn the_mac_is_hmac_sha256() {
        // HMAC (RFC 2104) built by hand from SHA-256, over the length-prefixed parts.
        let key = b"Jefe";
        let mac = token_mac(key, "u", "p", "r", "1");
        let mut message = Vec::new();
        for part in ["u", "p", "r", "1"] {
            message.extend((part.len() as u64).to_be_bytes());
            message.extend(part.as_bytes());
        }
        let mut block = [0u8; 64];
        block[..key.len()].copy_from_slice(key);
        let inner = Sha256::digest([&block.map(|b| b ^ 0x36)[..], &message].concat());
        let outer = Sha256::digest([&block.map(|b| b ^ 0x5c)[..], &inner[..]].concat());
        assert_eq!(mac[..], outer[..]);
        assert_eq!(decode_hex(&encode_hex(&mac)).unwrap(), mac);
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
    }

    #[tokio::test]
    async fn passwords_are_hashed_and_checked() {
        let auth = Authenticator::new(Duration::from_secs(60), 4);
        let hash = auth.hash("secret".into()).await.unwrap();
        assert!(hash.starts_with("$2"), "{hash}");
        assert!(!hash.contains("secret"));
        assert!(auth.verify("secret".into(), hash.clone()).await);
        assert!(!auth.verify("other".into(), hash).await);
        assert!(!auth.verify("secret".into(), "not a hash".into()).await);
    }
}
