//! One vocabulary for the platform's catalog types and the server product's audit codes.
//!
//! The server logs `dataConnectionCreated` where the platform says `connection-created`. The
//! enricher stores the catalog type an event's type means beside the type itself
//! ([`crate::CatalogMatch`]), so one rule or stream mapping written for `connection-created`
//! covers the server's code too, and analysts can count both as one. A type is never rewritten:
//! the original code stays the event's type.
//!
//! The shipped mapping holds only codes whose meaning is the catalog type's; an operator adds or
//! overrides pairs in the enricher's `[vocabulary]` settings.

use crate::catalog::{self, CatalogEntry};
use crate::{CatalogMatch, EventType};
use std::collections::BTreeMap;

/// Server audit codes (seed `003_5c27bf3fc2b6b713.txt`) and the catalog type each means.
pub const SHIPPED: &[(&str, &str)] = &[
    ("dataConnectionCreated", "connection-created"),
    ("dataConnectionUpdated", "connection-edited"),
    ("dataConnectionDeleted", "connection-deleted"),
];

/// The mapping in force: every catalog type to itself, the shipped pairs, then the configured
/// ones over them. Each meaning is built once here, so a lookup on the enricher's hot path is one
/// map lookup and a clone.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    meanings: BTreeMap<String, CatalogMatch>,
}

/// A configured pair that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VocabularyError {
    #[error("vocabulary: {code:?} is not a valid event type: {reason}")]
    BadCode { code: String, reason: String },
    #[error("vocabulary: {code:?} maps to {target:?}, which is not a catalog type")]
    NotCatalog { code: String, target: String },
    #[error("vocabulary: {code:?} is itself a catalog type and cannot be mapped")]
    CatalogCode { code: String },
}

impl Default for Vocabulary {
    fn default() -> Self {
        Self::with(&BTreeMap::new()).unwrap_or_else(|_| Self {
            meanings: BTreeMap::new(),
        })
    }
}

/// What a catalog entry means, as stored with an event.
fn meaning(entry: &CatalogEntry) -> Option<CatalogMatch> {
    Some(CatalogMatch {
        event_type: EventType::new(entry.name).ok()?,
        kind: entry.entity_kind.map(str::to_string),
        action: entry.action.to_string(),
    })
}

impl Vocabulary {
    /// The shipped mapping with `configured` (code -> catalog type) laid over it.
    pub fn with(configured: &BTreeMap<String, String>) -> Result<Self, VocabularyError> {
        let mut meanings: BTreeMap<String, CatalogMatch> = catalog::CATALOG
            .iter()
            .filter_map(|e| Some((e.name.to_string(), meaning(e)?)))
            .collect();
        let shipped = SHIPPED.iter().map(|(c, t)| (c.to_string(), t.to_string()));
        let configured = configured.iter().map(|(c, t)| (c.clone(), t.clone()));
        for (code, target) in shipped.chain(configured) {
            EventType::new(code.as_str()).map_err(|e| VocabularyError::BadCode {
                code: code.clone(),
                reason: e.to_string(),
            })?;
            if catalog::lookup(&code).is_some() {
                return Err(VocabularyError::CatalogCode { code });
            }
            let m = catalog::lookup(&target).and_then(meaning).ok_or_else(|| {
                VocabularyError::NotCatalog {
                    code: code.clone(),
                    target,
                }
            })?;
            meanings.insert(code, m);
        }
        Ok(Self { meanings })
    }

    /// The catalog type `event_type` means: itself when it is one, else its mapped type.
    pub fn lookup(&self, event_type: &str) -> Option<CatalogMatch> {
        self.meanings.get(event_type).cloned()
    }

    /// Every code mapped to `catalog_type`: what a rule or stream mapping on the catalog type
    /// also covers.
    pub fn codes_for<'a>(&'a self, catalog_type: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.meanings
            .iter()
            .filter(move |(code, m)| m.event_type.as_str() == catalog_type && *code != catalog_type)
            .map(|(c, _)| c.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_types_map_to_themselves_and_codes_to_their_meaning() {
        let v = Vocabulary::default();
        let m = v.lookup("connection-created").unwrap();
        assert_eq!(
            (m.event_type.as_str(), m.kind.as_deref(), m.action.as_str()),
            ("connection-created", Some("connection"), "created")
        );
        assert_eq!(v.lookup("dataConnectionCreated"), Some(m));
        assert_eq!(v.lookup("log").unwrap().kind, None);
        assert_eq!(v.lookup("userService.create"), None);
        assert_eq!(
            v.codes_for("connection-deleted").collect::<Vec<_>>(),
            vec!["dataConnectionDeleted"]
        );
    }

    #[test]
    fn configured_pairs_add_and_override() {
        let configured = BTreeMap::from([
            (
                "executionSessionService.execute".to_string(),
                "job-start".to_string(),
            ),
            (
                "dataConnectionUpdated".to_string(),
                "connection-published".to_string(),
            ),
        ]);
        let v = Vocabulary::with(&configured).unwrap();
        assert_eq!(
            v.lookup("executionSessionService.execute")
                .unwrap()
                .event_type
                .as_str(),
            "job-start"
        );
        assert_eq!(
            v.lookup("dataConnectionUpdated")
                .unwrap()
                .event_type
                .as_str(),
            "connection-published"
        );
    }

    #[test]
    fn bad_pairs_are_named() {
        let bad = |c: &str, t: &str| {
            Vocabulary::with(&BTreeMap::from([(c.to_string(), t.to_string())]))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("x", "no-such-type").contains("\"no-such-type\""));
        assert!(bad("query-created", "job-start").contains("is itself a catalog type"));
        assert!(bad("bad code", "job-start").contains("not a valid event type"));
    }
}
