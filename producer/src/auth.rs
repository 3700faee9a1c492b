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
                sources: vec![audit_schemas::Source::Client, audit_schemas::Source::Server],
                // Local development only: events, never directory writes.
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
    pub fn authorize(&self, header: Option<&str>) -> Result<Caller, Refused> {
        let Some(token) = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return self.anonymous.clone().ok_or(Refused::NoValidToken);
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
        assert_eq!(
            t.authorize(Some("Bearer 0123456789abcdef-web"))
                .unwrap()
                .service,
            "web"
        );
        assert!(t.authorize(Some("Bearer 0123456789abcdef-wex")).is_err());
        assert!(t.authorize(Some("0123456789abcdef-web")).is_err());
        assert!(t.authorize(None).is_err());
        // Without browser keys, a JWT-shaped value is just a wrong token.
        assert_eq!(
            t.authorize(Some("Bearer aaa.bbb.ccc")).unwrap_err(),
            Refused::NoValidToken
        );
    }

    #[test]
    fn anonymous_only_without_a_header() {
        let t = tokens(true);
        assert_eq!(t.authorize(None).unwrap().service, "dev");
        assert!(t.authorize(Some("Bearer wrong")).is_err());
    }
}
