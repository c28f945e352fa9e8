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

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rampart_storage::{AuthState, Command};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::Sha256;

use crate::error::ServerError;
use crate::jwt::{IssueError, JwtKeys};

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
    /// A client whose JSON Web Token was issued before the auth store last changed: every call
    /// that needs a user fails with "revision of auth store is old" (etcd's
    /// `ErrAuthOldRevision`), upon which etcd's clients authenticate again.
    OldAuthRevision,
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
            Caller::OldAuthRevision => Err(ServerError::AuthOldRevision),
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
    ///
    /// With authentication off, an anonymous write goes as it is, and the applier refuses it
    /// if authentication was turned on meanwhile (`AuthState::refusal_without_user`). A lease
    /// revoke cannot be told from the revokes of expired leases that way, so an anonymous
    /// one always carries the empty user: should authentication be on when it is applied,
    /// a lease with keys is refused, as etcd's applier refuses it.
    pub fn wrap(&self, command: Command, enabled: bool) -> Command {
        let user = match self {
            Caller::User(user) => user.clone(),
            Caller::Anonymous if enabled || matches!(command, Command::LeaseRevoke { .. }) => {
                String::new()
            }
            // The calls of an invalid or old token are refused by [`Caller::check`] before they are
            // proposed.
            Caller::Trusted
            | Caller::Anonymous
            | Caller::InvalidToken
            | Caller::OldAuthRevision => return command,
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

/// The kind of tokens Authenticate hands out (`--auth-token`).
#[derive(Clone, Debug)]
pub enum TokenSettings {
    /// etcd's simple tokens, valid for `ttl` (`--auth-token-ttl`) after their last use.
    Simple { ttl: Duration },
    /// JSON Web Tokens (`--auth-token=jwt,...`).
    Jwt(Box<JwtKeys>),
}

/// The tokens members issue, checked by any member, and this member's password hashing.
pub struct Authenticator {
    tokens: Tokens,
    /// `--bcrypt-cost`.
    bcrypt_cost: u32,
}

enum Tokens {
    Simple(SimpleTokens),
    Jwt(Box<JwtKeys>),
}

/// Simple tokens. A token is `random.issued.user.mac`: 16 random characters, the Unix second
/// it was issued, the user's name in hex, and an HMAC-SHA-256 (in hex) over those and the
/// user's password hash, keyed with the auth store's token key. Every member holds the key
/// (it is replicated, drawn anew by each `AuthEnable`), so a token issued by one member is
/// good on all of them, as etcd 3.4's simple tokens (which it replicates through Raft) are.
/// It is void once the user's password changes, the user goes, or authentication is turned
/// off and on; and it expires `--auth-token-ttl` after it was issued, or after its last use
/// on the member checking it, whichever is later.
struct SimpleTokens {
    /// When each token was last used on this member: a use renews it for `ttl` here.
    last_used: Mutex<HashMap<String, Instant>>,
    /// `--auth-token-ttl`.
    ttl: Duration,
}

impl Authenticator {
    pub fn new(tokens: TokenSettings, bcrypt_cost: u32) -> Authenticator {
        let tokens = match tokens {
            TokenSettings::Simple { ttl } => Tokens::Simple(SimpleTokens {
                last_used: Mutex::new(HashMap::new()),
                ttl,
            }),
            TokenSettings::Jwt(keys) => Tokens::Jwt(keys),
        };
        Authenticator {
            tokens,
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
        match &self.tokens {
            Tokens::Simple(simple) => match simple.check(auth, token) {
                Some(user) => Caller::User(user),
                None => {
                    simple.last_used.lock().remove(token);
                    Caller::InvalidToken
                }
            },
            Tokens::Jwt(keys) => match keys.verify(token) {
                None => Caller::InvalidToken,
                Some(claims) if claims.revision < auth.revision() => Caller::OldAuthRevision,
                Some(claims) => Caller::User(claims.username),
            },
        }
    }

    /// Issues a token for `user`, whose password hash is `password`, under `auth`.
    pub fn issue(
        &self,
        auth: &AuthState,
        user: &str,
        password: &str,
    ) -> Result<String, ServerError> {
        match &self.tokens {
            Tokens::Simple(_) => Ok(SimpleTokens::issue(auth, user, password)),
            Tokens::Jwt(keys) => keys.issue(user, auth.revision()).map_err(|e| match e {
                IssueError::VerifyOnly => ServerError::JwtVerifyOnly,
                IssueError::Signing(reason) => ServerError::Internal(reason),
            }),
        }
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

impl SimpleTokens {
    /// The user of `token` if it is valid under `auth` and fresh; renews it.
    fn check(&self, auth: &AuthState, token: &str) -> Option<String> {
        let mut parts = token.split('.');
        let (random, issued, user, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let user = String::from_utf8(hex::decode(user).ok()?).ok()?;
        let password = auth.users.get(&user)?.password.as_deref()?;
        token_mac(&auth.meta.token_key, &user, password, random, issued)
            .verify_slice(&hex::decode(mac).ok()?)
            .ok()?;
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
    fn issue(auth: &AuthState, user: &str, password: &str) -> String {
        let random: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(TOKEN_LENGTH)
            .map(char::from)
            .collect();
        let issued = unix_now().to_string();
        let mac = token_mac(&auth.meta.token_key, user, password, &random, &issued);
        format!(
            "{random}.{issued}.{}.{}",
            hex::encode(user),
            hex::encode(mac.finalize().into_bytes())
        )
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The MAC of a token's parts, to finalize or verify: HMAC-SHA-256 keyed with `key`, over
/// each part with its length.
fn token_mac(key: &[u8], user: &str, password: &str, random: &str, issued: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in [user, password, random, issued] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_storage::AuthCommand;

    fn simple(ttl: u64) -> TokenSettings {
        TokenSettings::Simple {
            ttl: Duration::from_secs(ttl),
        }
    }

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
        let member = Authenticator::new(simple(60), 4);
        let other = Authenticator::new(simple(60), 4);
        let store = enabled_store(b"key");
        let token = member.issue(&store, "root", "h1").unwrap();
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
        let auth = Authenticator::new(simple(0), 4);
        let store = enabled_store(b"key");
        let token = auth.issue(&store, "root", "h1").unwrap();
        assert_eq!(auth.caller(&store, Some(&token)), Caller::InvalidToken);
    }

    #[test]
    fn json_web_tokens_go_stale_when_the_auth_store_changes() {
        let keys = crate::jwt::JwtKeys::new(
            jsonwebtoken::Algorithm::HS256,
            None,
            Some(b"secret"),
            Duration::from_secs(60),
        )
        .unwrap();
        let member = Authenticator::new(TokenSettings::Jwt(Box::new(keys)), 4);
        let store = enabled_store(b"key");
        let token = member.issue(&store, "root", "h1").unwrap();
        assert_eq!(
            member.caller(&store, Some(&token)),
            Caller::User("root".into())
        );
        assert_eq!(member.caller(&store, Some("a.b.c")), Caller::InvalidToken);
        // Any change of the auth store (here, a new user) raises its revision: the token is
        // then too old for any call that needs a user, and etcd's clients authenticate again.
        let changed = store
            .after(&AuthCommand::UserAdd {
                name: "alice".into(),
                password: Some("h2".into()),
            })
            .unwrap();
        let old = member.caller(&changed, Some(&token));
        assert_eq!(old, Caller::OldAuthRevision);
        assert_eq!(old.user(), Err(ServerError::AuthOldRevision));
        let renewed = member.issue(&changed, "root", "h1").unwrap();
        assert_eq!(
            member.caller(&changed, Some(&renewed)),
            Caller::User("root".into())
        );
    }

    #[test]
    fn an_anonymous_lease_revoke_always_names_the_empty_user() {
        let revoke = Command::LeaseRevoke { id: 7 };
        let as_nobody = Command::AsUser {
            user: String::new(),
            command: Box::new(revoke.clone()),
        };
        assert_eq!(Caller::Anonymous.wrap(revoke.clone(), false), as_nobody);
        assert_eq!(Caller::Anonymous.wrap(revoke.clone(), true), as_nobody);
        assert_eq!(Caller::Trusted.wrap(revoke.clone(), true), revoke);
        // Other anonymous writes go bare with authentication off: the applier refuses them
        // if it was turned on meanwhile.
        let compact = Command::Compact { revision: 3 };
        assert_eq!(Caller::Anonymous.wrap(compact.clone(), false), compact);
    }

    #[tokio::test]
    async fn passwords_are_hashed_and_checked() {
        let auth = Authenticator::new(simple(60), 4);
        let hash = auth.hash("secret".into()).await.unwrap();
        assert!(hash.starts_with("$2"), "{hash}");
        assert!(!hash.contains("secret"));
        assert!(auth.verify("secret".into(), hash.clone()).await);
        assert!(!auth.verify("other".into(), hash).await);
        assert!(!auth.verify("secret".into(), "not a hash".into()).await);
    }
}
