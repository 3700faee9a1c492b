//! Browser tokens: short-lived JWTs that the platform's server signs for a logged-in user, so
//! that user's browser can post CLIENT events without ever holding a service token.
//!
//! A token names the user (`sub`), the session (`sid`), optionally the tenant and login, the
//! audience (`aud`, `browser.audience`) and its lifetime (`iat`, `exp`). Its `kid` header picks
//! one of `browser.keys`, and the key fixes the algorithm, so a token cannot choose a weaker
//! one. Whatever the body of a request says about user, session or tenant is replaced by the
//! token's (see [`crate::body`]).

use crate::config::{BrowserConfig, BrowserKeyAlgorithm, BrowserKeyConfig};
use audit_schemas::ingest::MAX_ID_LEN;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The claims of a browser token, as the platform's server mints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserClaims {
    /// The user's id.
    pub sub: String,
    /// The user's session id.
    pub sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The user's login, stored as the events' `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    pub aud: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
}

/// Who a valid browser token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserIdentity {
    pub key_id: String,
    pub user_id: String,
    pub session_id: String,
    pub tenant: Option<String>,
    pub login: Option<String>,
}

/// Why a browser token was refused. The token itself is never part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrowserTokenError {
    #[error("the browser token is not a JWT with a kid header")]
    Malformed,
    #[error("the browser token's key {0:?} is not configured (browser.keys)")]
    UnknownKey(String),
    #[error("the browser token has expired; mint a new one")]
    Expired,
    #[error("the browser token is invalid: {0}")]
    Invalid(String),
}

struct Key {
    key: DecodingKey,
    algorithm: Algorithm,
}

/// Verifies browser tokens against the configured keys.
pub struct BrowserTokens {
    keys: HashMap<String, Key>,
    audience: String,
    max_lifetime_s: u64,
    leeway_s: u64,
}

/// The decoding key of one configured key, or why it cannot be one.
pub(crate) fn decoding_key(config: &BrowserKeyConfig) -> Result<(DecodingKey, Algorithm), String> {
    match config.algorithm {
        BrowserKeyAlgorithm::HS256 => {
            if config.public_key_pem.is_some() {
                return Err("an HS256 key takes `secret`, not `public_key_pem`".into());
            }
            let secret = config
                .secret
                .as_deref()
                .ok_or("an HS256 key needs `secret`")?;
            if secret.len() < 32 {
                return Err("`secret` must be at least 32 bytes".into());
            }
            Ok((
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ))
        }
        BrowserKeyAlgorithm::EdDSA => {
            if config.secret.is_some() {
                return Err(
                    "an EdDSA key takes `public_key_pem`, not `secret`: the private key stays with the platform"
                        .into(),
                );
            }
            let pem = config
                .public_key_pem
                .as_deref()
                .ok_or("an EdDSA key needs `public_key_pem`")?;
            DecodingKey::from_ed_pem(pem.as_bytes())
                .map(|k| (k, Algorithm::EdDSA))
                .map_err(|e| format!("`public_key_pem` is not an Ed25519 public key: {e}"))
        }
    }
}

impl BrowserTokens {
    /// `None` when no key is configured: browser tokens are then refused like any bad token.
    /// The settings were validated, so every key decodes.
    pub fn new(config: &BrowserConfig) -> Option<Self> {
        let keys: HashMap<String, Key> = config
            .keys
            .iter()
            .filter_map(|k| {
                let (key, algorithm) = decoding_key(k).ok()?;
                Some((k.id.clone(), Key { key, algorithm }))
            })
            .collect();
        (!keys.is_empty()).then(|| Self {
            keys,
            audience: config.audience.clone(),
            max_lifetime_s: config.max_ttl_s,
            leeway_s: config.leeway_s,
        })
    }

    /// Whether a bearer value has the shape of a JWT (three base64url parts).
    pub fn looks_like_jwt(token: &str) -> bool {
        let mut parts = 0;
        for part in token.split('.') {
            parts += 1;
            if part.is_empty()
                || !part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return false;
            }
        }
        parts == 3
    }

    /// Checks signature, audience, lifetime and claims; `now` is seconds since the epoch.
    pub fn verify(&self, token: &str, now: u64) -> Result<BrowserIdentity, BrowserTokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| BrowserTokenError::Malformed)?;
        let kid = header.kid.ok_or(BrowserTokenError::Malformed)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| BrowserTokenError::UnknownKey(truncate(&kid)))?;
        let mut validation = Validation::new(key.algorithm);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "sub"]);
        validation.leeway = self.leeway_s;
        validation.validate_exp = false; // checked below against `now`, so tests control time
        let claims = jsonwebtoken::decode::<BrowserClaims>(token, &key.key, &validation)
            .map_err(|e| BrowserTokenError::Invalid(e.to_string()))?
            .claims;
        if claims.exp + self.leeway_s < now {
            return Err(BrowserTokenError::Expired);
        }
        if claims.iat > now + self.leeway_s {
            return Err(BrowserTokenError::Invalid("iat is in the future".into()));
        }
        let longest = self.max_lifetime_s + self.leeway_s;
        if claims.exp.saturating_sub(claims.iat) > longest
            || claims.exp.saturating_sub(now) > longest
        {
            return Err(BrowserTokenError::Invalid(format!(
                "it lives longer than {} s (browser.max_ttl_s)",
                self.max_lifetime_s
            )));
        }
        for (claim, value) in [
            ("sub", Some(&claims.sub)),
            ("sid", Some(&claims.sid)),
            ("tenant", claims.tenant.as_ref()),
            ("login", claims.login.as_ref()),
        ] {
            if let Some(v) = value {
                if v.is_empty() || v.len() > MAX_ID_LEN || v.chars().any(char::is_control) {
                    return Err(BrowserTokenError::Invalid(format!(
                        "claim {claim} must be 1 to {MAX_ID_LEN} bytes without control characters"
                    )));
                }
            }
        }
        Ok(BrowserIdentity {
            key_id: kid,
            user_id: claims.sub,
            session_id: claims.sid,
            tenant: claims.tenant,
            login: claims.login,
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;
    // A throwaway Ed25519 pair for these tests only.
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBw2dk+A2d046U0BU7RhlDrUZXD5MoFo+eWechLNlohK\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAFdNgmK+vHksPpL0xRXrG1wgv3xnIpk9j322olWXR3aE=\n-----END PUBLIC KEY-----\n";

    fn config() -> BrowserConfig {
        BrowserConfig {
            keys: vec![
                BrowserKeyConfig {
                    id: "h1".into(),
                    algorithm: BrowserKeyAlgorithm::HS256,
                    secret: Some(SECRET.into()),
                    public_key_pem: None,
                },
                BrowserKeyConfig {
                    id: "e1".into(),
                    algorithm: BrowserKeyAlgorithm::EdDSA,
                    secret: None,
                    public_key_pem: Some(ED_PUBLIC.into()),
                },
            ],
            ..BrowserConfig::default()
        }
    }

    fn claims() -> BrowserClaims {
        BrowserClaims {
            sub: "alice".into(),
            sid: "s1".into(),
            tenant: Some("acme".into()),
            login: None,
            aud: "audit-ingest".into(),
            iat: NOW - 10,
            exp: NOW + 600,
        }
    }

    fn hs(kid: &str, claims: &BrowserClaims, secret: &str) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_valid_token_names_user_session_and_tenant() {
        let tokens = BrowserTokens::new(&config()).unwrap();
        let token = hs("h1", &claims(), SECRET);
        assert!(BrowserTokens::looks_like_jwt(&token));
        let id = tokens.verify(&token, NOW).unwrap();
        assert_eq!(
            (
                id.user_id.as_str(),
                id.session_id.as_str(),
                id.tenant.as_deref()
            ),
            ("alice", "s1", Some("acme"))
        );
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("e1".into());
        let ed = jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(tokens.verify(&ed, NOW).unwrap().key_id, "e1");
    }

    #[test]
    fn forged_expired_long_lived_and_foreign_tokens_are_refused() {
        let tokens = BrowserTokens::new(&config()).unwrap();
        let wrong_secret = hs("h1", &claims(), "another-secret-of-enough-length-x");
        assert!(matches!(
            tokens.verify(&wrong_secret, NOW),
            Err(BrowserTokenError::Invalid(_))
        ));
        assert_eq!(
            tokens.verify(&hs("h1", &claims(), SECRET), NOW + 700),
            Err(BrowserTokenError::Expired)
        );
        let long = BrowserClaims {
            exp: NOW + 86_400,
            ..claims()
        };
        assert!(tokens.verify(&hs("h1", &long, SECRET), NOW).is_err());
        let other_api = BrowserClaims {
            aud: "billing".into(),
            ..claims()
        };
        assert!(tokens.verify(&hs("h1", &other_api, SECRET), NOW).is_err());
        assert_eq!(
            tokens.verify(&hs("h9", &claims(), SECRET), NOW),
            Err(BrowserTokenError::UnknownKey("h9".into()))
        );
        // An HS256 token under the EdDSA key's id (algorithm confusion) is refused.
        assert!(tokens.verify(&hs("e1", &claims(), SECRET), NOW).is_err());
        let control = BrowserClaims {
            sid: "s\n1".into(),
            ..claims()
        };
        assert!(tokens.verify(&hs("h1", &control, SECRET), NOW).is_err());
        assert_eq!(
            tokens.verify("a.b", NOW).unwrap_err(),
            BrowserTokenError::Malformed
        );
        assert!(!BrowserTokens::looks_like_jwt("0123456789abcdef-web"));
    }

    /// What the Rust client mints, the API accepts: same claims, same key ids.
    #[test]
    fn tokens_minted_by_the_client_crate_verify() {
        use audit_client::browser_token::{mint, BrowserUser, SigningKey, DEFAULT_AUDIENCE};
        let tokens = BrowserTokens::new(&config()).unwrap();
        let user = BrowserUser {
            user_id: "bob".into(),
            session_id: "s-bob".into(),
            tenant: None,
            login: Some("bob@example.com".into()),
        };
        let life = std::time::Duration::from_secs(300);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for key in [
            SigningKey::Hs256 {
                kid: "h1".into(),
                secret: SECRET.as_bytes().to_vec(),
            },
            SigningKey::Ed25519 {
                kid: "e1".into(),
                private_key_pem: ED_PRIVATE.as_bytes().to_vec(),
            },
        ] {
            let token = mint(&key, &user, DEFAULT_AUDIENCE, life).unwrap();
            let id = tokens.verify(&token, now).unwrap();
            assert_eq!(
                (
                    id.user_id.as_str(),
                    id.session_id.as_str(),
                    id.login.as_deref()
                ),
                ("bob", "s-bob", Some("bob@example.com"))
            );
        }
    }

    #[test]
    fn keys_are_checked_at_start() {
        let short = BrowserKeyConfig {
            id: "h".into(),
            algorithm: BrowserKeyAlgorithm::HS256,
            secret: Some("short".into()),
            public_key_pem: None,
        };
        assert!(decoding_key(&short).unwrap_err().contains("32 bytes"));
        let private_given = BrowserKeyConfig {
            id: "e".into(),
            algorithm: BrowserKeyAlgorithm::EdDSA,
            secret: Some(SECRET.into()),
            public_key_pem: None,
        };
        assert!(decoding_key(&private_given).is_err());
    }
}
