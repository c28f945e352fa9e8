//! JSON Web Tokens, etcd's `--auth-token=jwt,...` (`auth/jwt.go`, `auth/options.go`): tokens
//! signed with a key from a file, which any member holding the public key verifies, with no
//! state kept on any member.
//!
//! A token's claims are etcd's: `username`, `revision` (the auth store's revision when it was
//! issued) and `exp` (`ttl` after it was issued). A token whose revision is older than the
//! auth store's is refused with "revision of auth store is old", upon which etcd's clients
//! authenticate again: so a changed password, a deleted user or a revoked role takes effect
//! on every token at once, as in etcd.
//!
//! The flag's options are etcd's: `sign-method` (required: `RS256`, `RS384`, `RS512`, `PS256`,
//! `PS384`, `PS512`, `ES256`, `ES384`, `HS256`, `HS384`, `HS512`, and `EdDSA`, which etcd 3.5
//! added), `pub-key` and `priv-key` (PEM files; for the HS methods, `priv-key` is the file of
//! the shared secret), and `ttl` (a Go duration, default 5 minutes). A member given only the
//! public key verifies tokens but issues none; given only the private key, it derives the
//! public one. Unknown options are logged and ignored, as etcd does.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde::{Deserialize, Serialize};

/// etcd's default token lifetime (`auth.DefaultTTL`).
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(5 * 60);

/// The keys and lifetime of a member's JSON Web Tokens.
#[derive(Clone)]
pub struct JwtKeys {
    algorithm: Algorithm,
    /// `None` when the member has only the public key: it verifies tokens but issues none.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    /// What [`JwtKeys::verify`] accepts: this member's method, and `exp` checked to the
    /// second with no leeway, as etcd's jwt-go checks it. Made once: every call with a token
    /// is checked against it.
    validation: Validation,
    ttl: Duration,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("algorithm", &self.algorithm)
            .field("verify_only", &self.signing.is_none())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A token's claims, named as etcd names them.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub username: String,
    pub revision: u64,
    exp: u64,
}

/// Why a token could not be issued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// etcd's `ErrVerifyOnly`: the member was given no private key.
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("auth: failed to sign a token: {0}")]
    Signing(String),
}

impl JwtKeys {
    /// The keys `options` (the part of `--auth-token` after `jwt,`) name, read from their
    /// files; and the options Rampart does not know, to be logged. An error says which
    /// option is wrong and why.
    pub fn from_options(options: &str) -> Result<(JwtKeys, Vec<String>), String> {
        let mut sign_method = None;
        let mut public = None;
        let mut private = None;
        let mut ttl = DEFAULT_JWT_TTL;
        let mut unknown = Vec::new();
        for option in options.split(',').filter(|o| !o.is_empty()) {
            let (name, value) = option
                .split_once('=')
                .ok_or_else(|| format!("option \"{option}\" is not NAME=VALUE"))?;
            match name {
                "sign-method" => sign_method = Some(value),
                "pub-key" => public = Some(read_key(name, value)?),
                "priv-key" => private = Some(read_key(name, value)?),
                "ttl" => {
                    ttl = crate::config::parse_go_duration(value)
                        .map_err(|reason| format!("ttl \"{value}\": {reason}"))?;
                    if ttl.is_zero() {
                        return Err("ttl must be positive".into());
                    }
                }
                _ => unknown.push(name.to_string()),
            }
        }
        let method = sign_method.ok_or("sign-method is required (RS256, ES256, HS256, ...)")?;
        let algorithm = Algorithm::from_str(method).map_err(|_| {
            format!(
                "sign-method \"{method}\" is not one of RS256, RS384, RS512, PS256, PS384, \
                 PS512, ES256, ES384, HS256, HS384, HS512, EdDSA"
            )
        })?;
        let keys = JwtKeys::new(algorithm, public.as_deref(), private.as_deref(), ttl)?;
        Ok((keys, unknown))
    }

    /// The keys of `algorithm` from the PEM `public` and `private` keys (for HMAC, `private`
    /// is the secret itself).
    pub fn new(
        algorithm: Algorithm,
        public: Option<&[u8]>,
        private: Option<&[u8]>,
        ttl: Duration,
    ) -> Result<JwtKeys, String> {
        let family = Family::of(algorithm);
        let (signing, verifying) = match (family, public, private) {
            (Family::Hmac, _, None) => return Err(format!("{algorithm:?} needs priv-key")),
            (Family::Hmac, _, Some(secret)) => (
                Some(EncodingKey::from_secret(secret)),
                DecodingKey::from_secret(secret),
            ),
            (_, None, None) => return Err("pub-key or priv-key is required".into()),
            (_, public, private) => {
                let signing = private.map(|pem| family.signing_key(pem)).transpose()?;
                let verifying = match (public, private) {
                    (Some(pem), _) => family.verifying_key(pem)?,
                    (None, Some(pem)) => family.derived_verifying_key(algorithm, pem)?,
                    (None, None) => unreachable!("handled above"),
                };
                (signing, verifying)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        let keys = JwtKeys {
            algorithm,
            signing,
            verifying,
            validation,
            ttl,
        };
        if keys.signing.is_some() {
            // The keys must be halves of one pair (etcd's ErrKeyMismatch).
            let probe = keys
                .issue("", 0)
                .map_err(|e| format!("priv-key cannot sign: {e}"))?;
            if keys.verify(&probe).is_none() {
                return Err("auth: public and private keys don't match".into());
            }
        }
        Ok(keys)
    }

    /// A token for `username` at auth revision `revision`, valid for the configured TTL.
    pub fn issue(&self, username: &str, revision: u64) -> Result<String, IssueError> {
        let signing = self.signing.as_ref().ok_or(IssueError::VerifyOnly)?;
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp: unix_now().saturating_add(self.ttl.as_secs()),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, signing)
            .map_err(|e| IssueError::Signing(e.to_string()))
    }

    /// The claims of `token` if its signature is good, its method is this member's, and it
    /// has not expired.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.verifying, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// The key kinds of the signing methods.
#[derive(Clone, Copy)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Family {
    fn of(algorithm: Algorithm) -> Family {
        use Algorithm::*;
        match algorithm {
            HS256 | HS384 | HS512 => Family::Hmac,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
            ES256 | ES384 => Family::Ec,
            EdDSA => Family::Ed,
        }
    }

    fn signing_key(self, pem: &[u8]) -> Result<EncodingKey, String> {
        match self {
            Family::Rsa => EncodingKey::from_rsa_pem(pem),
            Family::Ec => EncodingKey::from_ec_pem(pem),
            Family::Ed => EncodingKey::from_ed_pem(pem),
            Family::Hmac => Ok(EncodingKey::from_secret(pem)),
        }
        .map_err(|e| format!("priv-key: {e}{}", self.key_hint()))
    }

    fn verifying_key(self, pem: &[u8]) -> Result<DecodingKey, String> {
        match self {
            Family::Rsa => DecodingKey::from_rsa_pem(pem),
            Family::Ec => DecodingKey::from_ec_pem(pem),
            Family::Ed => DecodingKey::from_ed_pem(pem),
            Family::Hmac => Ok(DecodingKey::from_secret(pem)),
        }
        .map_err(|e| format!("pub-key: {e}"))
    }

    /// The public key of private key `pem`, for a member given only `priv-key`.
    fn derived_verifying_key(
        self,
        algorithm: Algorithm,
        pem: &[u8],
    ) -> Result<DecodingKey, String> {
        let bad = |e: &dyn fmt::Display| format!("priv-key: {e}{}", self.key_hint());
        let block = pem::parse(pem).map_err(|e| bad(&e))?;
        let der = block.contents();
        match (self, block.tag()) {
            (Family::Rsa, "RSA PRIVATE KEY") => {
                let pair = RsaKeyPair::from_der(der).map_err(|e| bad(&e))?;
                Ok(DecodingKey::from_rsa_der(pair.public().as_ref()))
            }
            (Family::Rsa, "PRIVATE KEY") => {
                let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| bad(&e))?;
                Ok(DecodingKey::from_rsa_der(pair.public().as_ref()))
            }
            (Family::Ec, "PRIVATE KEY") => {
                let curve = if algorithm == Algorithm::ES384 {
                    &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING
                } else {
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING
                };
                let rng = ring::rand::SystemRandom::new();
                let pair = EcdsaKeyPair::from_pkcs8(curve, der, &rng).map_err(|e| bad(&e))?;
                Ok(DecodingKey::from_ec_der(pair.public_key().as_ref()))
            }
            (Family::Ed, "PRIVATE KEY") => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| bad(&e))?;
                Ok(DecodingKey::from_ed_der(pair.public_key().as_ref()))
            }
            (_, tag) => Err(bad(&format!(
                "a PEM block \"{tag}\" is no key of this method"
            ))),
        }
    }

    /// What to do about a private key Rampart cannot read.
    fn key_hint(self) -> &'static str {
        match self {
            Family::Ec => {
                " (ECDSA keys must be PKCS#8: convert with `openssl pkcs8 -topk8 -nocrypt`)"
            }
            _ => "",
        }
    }
}

/// The contents of key file `path`, for option `name`.
fn read_key(name: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(Path::new(path)).map_err(|e| format!("{name} \"{path}\": {e}"))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key pair of `algorithm` as PEM (private key in PKCS#8), made with rcgen.
    fn pair(algorithm: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let pair = rcgen::KeyPair::generate_for(algorithm).unwrap();
        (pair.public_key_pem(), pair.serialize_pem())
    }

    #[test]
    fn tokens_carry_etcds_claims_and_verify_with_the_public_key_alone() {
        let (public, private) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let ttl = Duration::from_secs(60);
        let signer = JwtKeys::new(
            Algorithm::ES256,
            Some(public.as_bytes()),
            Some(private.as_bytes()),
            ttl,
        )
        .unwrap();
        let token = signer.issue("alice", 7).unwrap();
        let verifier = JwtKeys::new(Algorithm::ES256, Some(public.as_bytes()), None, ttl).unwrap();
        let claims = verifier.verify(&token).unwrap();
        assert_eq!((claims.username.as_str(), claims.revision), ("alice", 7));
        assert!(claims.exp >= unix_now() + 59, "{claims:?}");
        assert_eq!(verifier.issue("alice", 7), Err(IssueError::VerifyOnly));
        // Given only the private key, a member derives the public one.
        let derived = JwtKeys::new(Algorithm::ES256, None, Some(private.as_bytes()), ttl).unwrap();
        assert!(derived.verify(&token).is_some());
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let (public, private) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let keys = JwtKeys::new(
            Algorithm::ES256,
            Some(public.as_bytes()),
            Some(private.as_bytes()),
            Duration::from_secs(60),
        )
        .unwrap();
        let token = keys.issue("alice", 7).unwrap();
        let (head, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let other_claims = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                username: "root".into(),
                revision: 7,
                exp: unix_now() + 60,
            },
            &EncodingKey::from_secret(b"guess"),
        )
        .unwrap();
        let (_, forged_body) = other_claims.split_once('.').unwrap();
        let (forged_body, _) = forged_body.split_once('.').unwrap();
        for forged in [
            format!("{head}.{forged_body}.{signature}"),
            other_claims.clone(),
            "not.a.token".to_string(),
            String::new(),
        ] {
            assert_eq!(keys.verify(&forged), None, "{forged}");
        }
        let expired = JwtKeys {
            ttl: Duration::ZERO,
            ..keys.clone()
        };
        let old = Claims {
            username: "alice".into(),
            revision: 7,
            exp: unix_now() - 1,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &old,
            expired.signing.as_ref().unwrap(),
        )
        .unwrap();
        assert_eq!(keys.verify(&token), None);
        // A key of another pair verifies nothing of this one.
        let (other_public, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let stranger = JwtKeys::new(
            Algorithm::ES256,
            Some(other_public.as_bytes()),
            None,
            keys.ttl,
        )
        .unwrap();
        assert_eq!(stranger.verify(&keys.issue("alice", 7).unwrap()), None);
    }

    #[test]
    fn options_are_etcds() {
        let dir = tempfile::tempdir().unwrap();
        // rcgen cannot make RSA keys with ring: these were made with `openssl genpkey`.
        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let (pub_path, priv_path) = (testdata.join("jwt-rsa.pub"), testdata.join("jwt-rsa.pem"));
        let pkcs1_path = testdata.join("jwt-rsa-pkcs1.pem");
        let (pub_path, priv_path) = (pub_path.display(), priv_path.display());
        let (keys, unknown) = JwtKeys::from_options(&format!(
            "pub-key={pub_path},priv-key={priv_path},sign-method=RS256,ttl=10m,colour=blue"
        ))
        .unwrap();
        assert_eq!(keys.ttl, Duration::from_secs(600));
        assert_eq!(unknown, ["colour"]);
        assert!(keys.verify(&keys.issue("bob", 1).unwrap()).is_some());
        // A private key alone, in PKCS#8 or PKCS#1: the public key is derived from it.
        for private in [priv_path.to_string(), pkcs1_path.display().to_string()] {
            let (keys, _) =
                JwtKeys::from_options(&format!("priv-key={private},sign-method=PS512")).unwrap();
            assert_eq!(keys.ttl, DEFAULT_JWT_TTL);
            assert!(keys.verify(&keys.issue("bob", 1).unwrap()).is_some());
        }

        let (ec_public, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let ec_path = dir.path().join("ec.pub");
        std::fs::write(&ec_path, ec_public).unwrap();
        let ec_path = ec_path.display();
        for (options, error) in [
            (format!("pub-key={pub_path}"), "sign-method is required"),
            (
                format!("pub-key={pub_path},sign-method=XX1"),
                "is not one of",
            ),
            ("sign-method=RS256".to_string(), "pub-key or priv-key"),
            (
                format!("sign-method=HS256,pub-key={pub_path}"),
                "needs priv-key",
            ),
            (
                format!("sign-method=RS256,pub-key={ec_path},priv-key={priv_path}"),
                "pub-key",
            ),
            (
                "sign-method=RS256,priv-key=/nonexistent/k".to_string(),
                "/nonexistent/k",
            ),
            (
                format!("sign-method=RS256,priv-key={priv_path},ttl=x"),
                "ttl",
            ),
            (
                format!("sign-method=RS256,priv-key={priv_path},ttl=0s"),
                "positive",
            ),
            (format!("sign-method=RS256,{priv_path}"), "NAME=VALUE"),
        ] {
            let message = JwtKeys::from_options(&options).unwrap_err();
            assert!(message.contains(error), "{options}: {message}");
        }
        // Halves of two pairs are refused, as etcd's ErrKeyMismatch.
        let message = JwtKeys::from_options(&format!(
            "sign-method=RS256,priv-key={priv_path},pub-key={}",
            testdata.join("jwt-rsa-other.pub").display()
        ))
        .unwrap_err();
        assert!(message.contains("don't match"), "{message}");
    }

    #[test]
    fn hmac_tokens_use_the_secret_file() {
        let keys = JwtKeys::new(
            Algorithm::HS512,
            None,
            Some(b"a shared secret"),
            DEFAULT_JWT_TTL,
        )
        .unwrap();
        let token = keys.issue("carol", 3).unwrap();
        let other =
            JwtKeys::new(Algorithm::HS512, None, Some(b"another"), DEFAULT_JWT_TTL).unwrap();
        assert!(keys.verify(&token).is_some());
        assert_eq!(other.verify(&token), None);
    }
}
