//! The reference server's tokens: JSON Web Tokens signed with HMAC-SHA-256 (protocol section 8).
//!
//! A token binds a user id (`sub`) to an expiry (`exp`, Unix seconds). Application backends mint them with any
//! JWT library and the shared secret; [`TokenAuthority::mint`] does the same for tests and development.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The shortest secret accepted, in bytes: HS256 with a shorter key is guessable.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Anything else: not a JWT, wrong algorithm, bad signature, missing or invalid claims.
    #[error("{0}")]
    Invalid(String),
}

/// Why a secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token secret must be at least {MIN_SECRET_BYTES} bytes long (it is {0})")]
pub struct WeakSecret(pub usize);

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Mints and verifies HS256 tokens with one shared secret.
#[derive(Clone)]
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAuthority { .. }")
    }
}

impl TokenAuthority {
    /// An authority for this shared secret (at least [`MIN_SECRET_BYTES`] bytes).
    pub fn new(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret(secret.len()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        Ok(TokenAuthority {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// A token for `user_id`, valid for `ttl` from now.
    pub fn mint(&self, user_id: &str, ttl: Duration) -> Result<String, AuthError> {
        presently_core::protocol::validate_user_id(user_id)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let now = unix_seconds();
        self.encode(&Claims {
            sub: user_id.to_owned(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
        })
    }

    /// A token for `user_id` that expires at `expires_at` (which may be in the past, to test expiry).
    pub fn mint_until(&self, user_id: &str, expires_at: SystemTime) -> Result<String, AuthError> {
        presently_core::protocol::validate_user_id(user_id)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let exp = expires_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.encode(&Claims {
            sub: user_id.to_owned(),
            exp,
            iat: Some(unix_seconds()),
        })
    }

    fn encode(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// The user id a valid token names.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad token signature".into()),
                _ => AuthError::Invalid(format!("token is not a valid HS256 JWT: {e}")),
            })?;
        presently_core::protocol::validate_user_id(&data.claims.sub)
            .map_err(|e| AuthError::Invalid(format!("token subject: {e}")))?;
        Ok(data.claims.sub)
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn minted_tokens_verify_to_their_user() {
        let auth = TokenAuthority::new(SECRET).unwrap();
        let token = auth.mint("alice", Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&token), Ok("alice".to_owned()));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = TokenAuthority::new(SECRET).unwrap();
        let other = TokenAuthority::new(b"another secret of enough length").unwrap();
        let token = other.mint("alice", Duration::from_secs(60)).unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify("alice"), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify(""), Err(AuthError::Invalid(_))));
        let expired = auth
            .encode(&Claims {
                sub: "alice".into(),
                exp: unix_seconds() - 5,
                iat: None,
            })
            .unwrap();
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        let no_subject = auth
            .encode(&Claims {
                sub: String::new(),
                exp: unix_seconds() + 60,
                iat: None,
            })
            .unwrap();
        assert!(matches!(
            auth.verify(&no_subject),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn weak_secrets_are_refused() {
        assert_eq!(TokenAuthority::new(b"short").unwrap_err(), WeakSecret(5));
    }
}
