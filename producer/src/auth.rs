//! Bearer tokens. Presented tokens are hashed and compared with every configured token's hash
//! in constant time, so response timing reveals nothing about how much of a token was right.

use crate::body::Caller;
use crate::config::TokenConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
    anonymous: Option<Caller>,
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
                        },
                    )
                })
                .collect(),
            anonymous: anonymous_service.map(|service| Caller {
                service: service.to_string(),
                sources: vec![audit_schemas::Source::Client, audit_schemas::Source::Server],
                // Local development only: events, never directory writes.
                scopes: vec![crate::config::Scope::Events],
            }),
        }
    }

    /// The caller for an `Authorization` header value, or `None` when it grants nothing.
    pub fn authorize(&self, header: Option<&str>) -> Option<Caller> {
        let Some(token) = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return self.anonymous.clone();
        };
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
        assert!(t.authorize(Some("Bearer 0123456789abcdef-wex")).is_none());
        assert!(t.authorize(Some("0123456789abcdef-web")).is_none());
        assert!(t.authorize(None).is_none());
    }

    #[test]
    fn anonymous_only_without_a_header() {
        let t = tokens(true);
        assert_eq!(t.authorize(None).unwrap().service, "dev");
        assert!(t.authorize(Some("Bearer wrong")).is_none());
    }
}
