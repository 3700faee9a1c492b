//! Administrators' rules on the compacted `audit.rules` topic: which event types to drop for
//! which groups or users.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RuleAction {
    Drop,
    Keep,
}

/// Rules apply in ascending `order` (ties by `id`); the first whose every non-empty criterion
/// matches decides; no match keeps the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRule {
    pub id: String,
    pub order: i32,
    pub description: Option<String>,
    /// Group ids or names; empty matches any.
    pub groups: Vec<String>,
    /// User ids or logins; empty matches any.
    pub users: Vec<String>,
    /// Event-type globs (`query-*`); empty matches any.
    pub event_types: Vec<String>,
    pub action: RuleAction,
}
