//! Minting browser tokens, for a platform server written in Rust: after its own login check,
//! the server signs a short-lived token naming the user and session, and hands it to the page;
//! the page's logger presents it to the ingest API, which takes user, session and tenant from
//! it (see the README, "Browser logging"). The key is the server's: the browser never sees it.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The audience the ingest API expects by default (`browser.audience`).
pub const DEFAULT_AUDIENCE: &str = "audit-ingest";

/// Who the token speaks for.
#[derive(Debug, Clone)]
pub struct BrowserUser {
    pub user_id: String,
    pub session_id: String,
    pub tenant: Option<String>,
    pub login: Option<String>,
}

/// A signing key as configured on both sides: the same `kid`, and for HS256 the same secret.
pub enum SigningKey {
    /// A shared secret of at least 32 bytes.
    Hs256 { kid: String, secret: Vec<u8> },
    /// An Ed25519 private key, PKCS#8 PEM; the ingest API holds only the public key.
    Ed25519 {
        kid: String,
        private_key_pem: Vec<u8>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the signing key is unusable: {0}")]
    Key(String),
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    login: Option<&'a str>,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs a token for `user` valid for `lifetime` from now (keep it short: minutes).
pub fn mint(
    key: &SigningKey,
    user: &BrowserUser,
    audience: &str,
    lifetime: Duration,
) -> Result<String, MintError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: &user.user_id,
        sid: &user.session_id,
        tenant: user.tenant.as_deref(),
        login: user.login.as_deref(),
        aud: audience,
        iat: now,
        exp: now + lifetime.as_secs(),
    };
    let (kid, algorithm, encoding) = match key {
        SigningKey::Hs256 { kid, secret } => {
            if secret.len() < 32 {
                return Err(MintError::Key(
                    "an HS256 secret must be at least 32 bytes".into(),
                ));
            }
            (kid, Algorithm::HS256, EncodingKey::from_secret(secret))
        }
        SigningKey::Ed25519 {
            kid,
            private_key_pem,
        } => (
            kid,
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(private_key_pem).map_err(|e| MintError::Key(e.to_string()))?,
        ),
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.clone());
    Ok(jsonwebtoken::encode(&header, &claims, &encoding)?)
}
