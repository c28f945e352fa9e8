//! Authentication on a member (etcd's simple token provider, `auth/simple_token.go`, and the
//! password half of `auth/store.go`): who a call is from ([`Caller`]), the tokens this member
//! issued, and the bcrypt hashing and checking of passwords.
//!
//! The auth store itself (users, roles, permissions, whether authentication is on) is
//! replicated state: `rampart_storage::AuthState`, changed only through Raft. Tokens are not:
//! as etcd's simple tokens, each lives on the member that issued it, for `--auth-token-ttl`
//! after its last use, and a client that reaches another member gets "invalid auth token" and
//! authenticates again (etcd's clients do so by themselves). A token is void once its user is
//! deleted or its password changes, and once authentication is turned off.
//!
//! Passwords are hashed here, on the member that takes the request, before the change is
//! proposed: no plaintext password enters the Raft log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rampart_storage::{AuthState, Command};
use rand::distributions::Alphanumeric;
use rand::Rng;

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

/// One token this member issued.
struct Session {
    user: String,
    /// The user's password hash when the token was issued: a changed password voids it.
    password: Option<String>,
    /// The auth revision when it was issued: authentication turned off and on since voids it.
    revision: u64,
    /// When it expires unless used before; every use moves it `ttl` on.
    expires: Instant,
}

/// The tokens this member issued, and its password hashing settings.
pub struct Authenticator {
    sessions: Mutex<HashMap<String, Session>>,
    /// `--auth-token-ttl`.
    ttl: Duration,
    /// `--bcrypt-cost`.
    bcrypt_cost: u32,
    /// The number after the token's dot: etcd puts its Raft index there; unique on this
    /// member is what matters.
    next_index: AtomicU64,
}

impl Authenticator {
    pub fn new(ttl: Duration, bcrypt_cost: u32) -> Authenticator {
        Authenticator {
            sessions: Mutex::new(HashMap::new()),
            ttl,
            bcrypt_cost,
            next_index: AtomicU64::new(1),
        }
    }

    /// The caller a call's `token` (if any) stands for, under `auth` as this member last
    /// applied it. With authentication off, tokens are not looked at.
    pub fn caller(&self, auth: &AuthState, token: Option<&str>) -> Caller {
        self.session(auth, token).unwrap_or(Caller::InvalidToken)
    }

    /// [`Authenticator::caller`], with an unknown token an error.
    fn session(&self, auth: &AuthState, token: Option<&str>) -> Result<Caller, ServerError> {
        if !auth.enabled() {
            return Ok(Caller::Anonymous);
        }
        let Some(token) = token else {
            return Ok(Caller::Anonymous);
        };
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        let valid = sessions.get(token).is_some_and(|s| {
            s.expires > now
                && s.revision >= auth.meta.enabled_at
                && auth
                    .users
                    .get(&s.user)
                    .is_some_and(|u| u.password == s.password)
        });
        if !valid {
            sessions.remove(token);
            return Err(ServerError::InvalidAuthToken);
        }
        let session = sessions
            .get_mut(token)
            .ok_or(ServerError::InvalidAuthToken)?;
        session.expires = now + self.ttl;
        Ok(Caller::User(session.user.clone()))
    }

    /// Issues a token for `user`, whose password (hash) is `password`, under `auth`.
    pub fn issue(&self, auth: &AuthState, user: &str, password: Option<String>) -> String {
        let random: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(TOKEN_LENGTH)
            .map(char::from)
            .collect();
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let token = format!("{random}.{index}");
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        // Expired sessions go when a new one comes, so they never pile up.
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token.clone(),
            Session {
                user: user.to_string(),
                password,
                revision: auth.revision(),
                expires: now + self.ttl,
            },
        );
        token
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

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_storage::AuthCommand;

    fn enabled_store() -> AuthState {
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
            AuthCommand::Enable,
        ] {
            s = s.after(&step).unwrap();
        }
        s
    }

    #[test]
    fn tokens_name_their_user_until_voided() {
        let auth = Authenticator::new(Duration::from_secs(60), 4);
        let store = enabled_store();
        let token = auth.issue(&store, "root", Some("h1".into()));
        let (random, index) = token.split_once('.').unwrap();
        assert_eq!(random.len(), TOKEN_LENGTH);
        assert_eq!(index, "1");
        assert_eq!(
            auth.caller(&store, Some(&token)),
            Caller::User("root".into())
        );
        assert_eq!(auth.caller(&store, None), Caller::Anonymous);
        assert_eq!(auth.caller(&store, Some("nope.1")), Caller::InvalidToken);
        // A changed password voids it.
        let changed = store
            .after(&AuthCommand::UserChangePassword {
                name: "root".into(),
                password: "h2".into(),
            })
            .unwrap();
        assert_eq!(auth.caller(&changed, Some(&token)), Caller::InvalidToken);
        // So does turning authentication off and on.
        let token = auth.issue(&store, "root", Some("h1".into()));
        let cycled = store
            .after(&AuthCommand::Disable)
            .unwrap()
            .after(&AuthCommand::Enable)
            .unwrap();
        assert_eq!(auth.caller(&cycled, Some(&token)), Caller::InvalidToken);
    }

    #[test]
    fn tokens_expire_unless_used() {
        let auth = Authenticator::new(Duration::ZERO, 4);
        let store = enabled_store();
        let token = auth.issue(&store, "root", Some("h1".into()));
        assert_eq!(auth.caller(&store, Some(&token)), Caller::InvalidToken);
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
