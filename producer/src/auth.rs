//! Bearer tokens. Presented tokens are hashed and compared with every configured token's hash
//! in constant time, so response timing reveals nothing about how much of a token was right.
//! A bearer value shaped like a JWT that is no service token is tried as a browser token
//! ([`crate::browser`]).

use crate::body::{Caller, CallerCredential};
use crate::browser::{BrowserTokenError, BrowserTokens};
use crate::config::TokenConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
    anonymous: Option<Caller>,
    browser: Option<(BrowserTokens, String)>,
}

/// Why a request's credential grants nothing; the message never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("a valid bearer token is required")]
    NoValidToken,
    #[error("the Authorization header is not \"Bearer <token>\"")]
    NotBearer,
    #[error(transparent)]
    Browser(#[from] BrowserTokenError),
}

impl Tokens {
    pub fn new(tokens: &[TokenConfig], anonymous_service: Option<&str>) -> Self {
        Self {
            entries: tokens
                .iter()
                .map(|t| {
                    (
                        digest(&t.token),
                        Caller {
                            service: t.service.clone(),
                            sources: t.sources.clone(),
                            scopes: t.scopes.clone(),
                            tenant: t.tenant.clone(),
                            credential: Some(CallerCredential::Service),
                        },
                    )
                })
                .collect(),
            anonymous: anonymous_service.map(|service| Caller {
                service: service.to_string(),
                // Local development only: CLIENT events (whose user the enricher takes from the
                // session, never from the event), never SERVER events, never directory writes.
                sources: vec![audit_schemas::Source::Client],
                scopes: vec![crate::config::Scope::Events],
                tenant: None,
                credential: Some(CallerCredential::Anonymous),
            }),
            browser: None,
        }
    }

    /// Also accept browser tokens, for CLIENT events of `service`.
    pub fn with_browser(mut self, tokens: Option<BrowserTokens>, service: &str) -> Self {
        self.browser = tokens.map(|t| (t, service.to_string()));
        self
    }

    /// The caller for an `Authorization` header value, or why it grants nothing.
    ///
    /// Only a request with no `Authorization` header at all may be anonymous: a header that is
    /// there but is not a valid bearer token (another scheme, no token, a wrong one) is refused,
    /// so a typo or a stolen-looking credential is never quietly served with anonymous rights.
    pub fn authorize(&self, header: Option<&[u8]>) -> Result<Caller, Refused> {
        let Some(header) = header else {
            return self.anonymous.clone().ok_or(Refused::NoValidToken);
        };
        let Some(token) = bearer_token(header) else {
            return Err(Refused::NotBearer);
        };
        if let Some(caller) = self.service_token(token) {
            return Ok(caller);
        }
        match &self.browser {
            Some((browser, service)) if BrowserTokens::looks_like_jwt(token) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let identity = browser.verify(token, now)?;
                Ok(Caller::browser(service, identity))
            }
            _ => Err(Refused::NoValidToken),
        }
    }

    fn service_token(&self, token: &str) -> Option<Caller> {
        let presented = digest(token);
        let mut found = None;
        // Look at every entry whatever matches, so timing does not tell which one did.
        for (hash, caller) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive, RFC 9110 11.1), or
/// `None` for any other scheme, a missing or blank token, or a header that is not text.
fn bearer_token(header: &[u8]) -> Option<&str> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    // token68 (RFC 9110 11.2): one word, no spaces or control characters.
    (!token.is_empty()
        && !token
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()))
    .then_some(token)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::Source;

    fn tokens(anonymous: bool) -> Tokens {
        Tokens::new(
            &[TokenConfig {
                token: "0123456789abcdef-web".into(),
                service: "web".into(),
                sources: vec![Source::Client],
                scopes: vec![crate::config::Scope::Events],
                tenant: None,
            }],
            anonymous.then_some("dev"),
        )
    }

    #[test]
    fn bearer_tokens() {
        let t = tokens(false);
        let auth = |h: &str| t.authorize(Some(h.as_bytes()));
        assert_eq!(auth("Bearer 0123456789abcdef-web").unwrap().service, "web");
        assert_eq!(auth("bearer 0123456789abcdef-web").unwrap().service, "web");
        assert!(auth("Bearer 0123456789abcdef-wex").is_err());
        assert!(auth("0123456789abcdef-web").is_err());
        assert!(t.authorize(None).is_err());
        // Without browser keys, a JWT-shaped value is just a wrong token.
        assert_eq!(
            auth("Bearer aaa.bbb.ccc").unwrap_err(),
            Refused::NoValidToken
        );
    }

    #[test]
    fn anonymous_only_without_a_header() {
        let t = tokens(true);
        let anonymous = t.authorize(None).unwrap();
        assert_eq!(anonymous.service, "dev");
        assert_eq!(anonymous.sources, vec![Source::Client]);
        for header in [
            "Bearer wrong",
            "Basic dXNlcjpwYXNz",
            "bearer x",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Token 0123456789abcdef-web",
            "",
        ] {
            assert!(
                t.authorize(Some(header.as_bytes())).is_err(),
                "{header:?} must be refused, not served as anonymous"
            );
        }
        assert!(t.authorize(Some(b"Bearer \xff\xfe")).is_err());
    }
}
