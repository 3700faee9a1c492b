//! The event-type catalog.
//!
//! The 47 fixed types come from the platform's audit system (seed `000_0c9d6314fafac3bd.txt`);
//! each is `<entity kind>-<action>`, except `error` and `log`, which concern no entity. Services
//! may also send custom types (`my_log`) and server audit codes (`executionSessionService.create`)
//! as long as they match [`EventType::PATTERN`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// One fixed type of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    pub name: &'static str,
    /// The kind of entity the event is about; `None` for `error` and `log`.
    pub entity_kind: Option<&'static str>,
    pub action: &'static str,
}

const fn entry(name: &'static str, kind: &'static str, action: &'static str) -> CatalogEntry {
    CatalogEntry {
        name,
        entity_kind: Some(kind),
        action,
    }
}

/// The fixed types, in the seed's order.
pub const CATALOG: [CatalogEntry; 47] = [
    entry("query-created", "query", "created"),
    entry("query-edited", "query", "edited"),
    entry("query-deleted", "query", "deleted"),
    entry("query-start", "query", "start"),
    entry("query-published", "query", "published"),
    entry(
        "query-transformations-edited",
        "query",
        "transformations-edited",
    ),
    entry("connection-created", "connection", "created"),
    entry("connection-edited", "connection", "edited"),
    entry("connection-deleted", "connection", "deleted"),
    entry("connection-published", "connection", "published"),
    entry("job-created", "job", "created"),
    entry("job-edited", "job", "edited"),
    entry("job-deleted", "job", "deleted"),
    entry(
        "job-transformations-edited",
        "job",
        "transformations-edited",
    ),
    entry("job-start", "job", "start"),
    entry("script-created", "script", "created"),
    entry("script-edited", "script", "edited"),
    entry("script-deleted", "script", "deleted"),
    entry("script-start", "script", "start"),
    entry("script-published", "script", "published"),
    entry("predictive-model-created", "predictive-model", "created"),
    entry("predictive-model-edited", "predictive-model", "edited"),
    entry("predictive-model-deleted", "predictive-model", "deleted"),
    entry("predictive-model-start", "predictive-model", "start"),
    entry(
        "predictive-model-published",
        "predictive-model",
        "published",
    ),
    entry("action-start", "action", "start"),
    entry("notebook-created", "notebook", "created"),
    entry("notebook-edited", "notebook", "edited"),
    entry("notebook-deleted", "notebook", "deleted"),
    entry("notebook-start", "notebook", "start"),
    entry("notebook-published", "notebook", "published"),
    entry("project-created", "project", "created"),
    entry("project-edited", "project", "edited"),
    entry("project-deleted", "project", "deleted"),
    entry("project-opened", "project", "opened"),
    entry("entity-shared", "entity", "shared"),
    entry("entity-shared-silent", "entity", "shared-silent"),
    entry("table-produced", "table", "produced"),
    entry("user-invited", "user", "invited"),
    entry("comment-posted", "comment", "posted"),
    entry("dialog-ok", "dialog", "ok"),
    entry("main-menu-item-click", "main-menu-item", "click"),
    CatalogEntry {
        name: "error",
        entity_kind: None,
        action: "error",
    },
    entry("tutorial-completed", "tutorial", "completed"),
    entry("viewer-rendered", "viewer", "rendered"),
    CatalogEntry {
        name: "log",
        entity_kind: None,
        action: "log",
    },
    entry("package-tested", "package", "tested"),
];

/// The server product's audit codes its documentation and sample logs show (seed
/// `003_5c27bf3fc2b6b713.txt`): what `auditctl rules set` knows besides the catalog, so it can
/// warn about a type nothing sends.
pub const SERVER_CODES: &[&str] = &[
    "authenticationConfigurationService.create",
    "authenticationFailure",
    "authenticationSuccess",
    "dataCollectionCreated",
    "dataCollectionDeleted",
    "dataCollectionMoved",
    "dataCollectionUpdated",
    "dataConnectionCreated",
    "dataConnectionDeleted",
    "dataConnectionUpdated",
    "dataDirectoryCreated",
    "dataDirectoryDeleted",
    "dataDirectoryMoved",
    "dataFileCreated",
    "dataFileDeleted",
    "dataFileDownloaded",
    "dataFileEntryExtracted",
    "dataFileExtracted",
    "dataFileMoved",
    "dataFileUploaded",
    "dataflowProcessed",
    "dataflowProcessing",
    "directoryService.create",
    "directoryService.delete",
    "directoryService.update",
    "editSessionService.save",
    "executionPlanExecute",
    "executionSessionService.create",
    "executionSessionService.execute",
    "fileOpened",
    "fileStoreMountPointCreated",
    "fileStoreMountPointDeleted",
    "fileStoreMountPointUpdated",
    "groupService.create",
    "groupService.updateGroup",
    "nodeProcessed",
    "nodeProcessing",
    "resolutionFailed",
    "roleService.removeMemberFromAllRoles",
    "roleService.updateWithSecurity",
    "scheduledTaskConfigurationService.create",
    "scheduledTaskService.create",
    "securityConfigurationService.setSecurityConfig",
    "simpleScheduledTaskService.create",
    "simpleScheduledTaskService.runNow",
    "simpleScheduledTaskService.update",
    "userCredentialService.createOrUpdate",
    "userCredentialService.updateCurrentUserPassword",
    "userService.create",
    "userService.deleteUser",
    "userService.update",
    "userimportService.importUsers",
    "workspaceService.create",
    "workspaceService.createWorkspace",
];

/// Every type the pipeline knows of: the catalog's and the server's codes.
pub fn known_types() -> impl Iterator<Item = &'static str> {
    CATALOG
        .iter()
        .map(|e| e.name)
        .chain(SERVER_CODES.iter().copied())
}

/// Looks a name up in the fixed catalog.
pub fn lookup(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// A validated event type: a catalog name, a custom type or a server audit code.
///
/// Construction checks [`EventType::PATTERN`], so every value in the pipeline is safe to use as
/// a ClickHouse `LowCardinality` value, a metrics label or part of a CloudWatch stream choice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventType(String);

/// Why a string is not an event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventTypeError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} characters long; at most 128 are allowed")]
    TooLong(usize),
    #[error("contains {0:?}; only letters, digits and _ . : - are allowed")]
    BadCharacter(char),
}

impl EventType {
    /// The documented shape of custom types, as a regular expression.
    pub const PATTERN: &'static str = "[A-Za-z0-9_.:-]{1,128}";
    pub const MAX_LEN: usize = 128;

    pub fn new(name: impl Into<String>) -> Result<Self, EventTypeError> {
        let name = name.into();
        Self::check(&name)?;
        Ok(Self(name))
    }

    /// For names the pipeline builds from fixed parts (control events), not for input.
    pub(crate) fn trusted(name: String) -> Self {
        debug_assert!(Self::check(&name).is_ok(), "{name}");
        Self(name)
    }

    fn check(name: &str) -> Result<(), EventTypeError> {
        if name.is_empty() {
            return Err(EventTypeError::Empty);
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            return Err(EventTypeError::BadCharacter(bad));
        }
        // All allowed characters are ASCII, so bytes == characters here.
        if name.len() > Self::MAX_LEN {
            return Err(EventTypeError::TooLong(name.len()));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The catalog entry when this is one of the fixed types.
    pub fn catalog_entry(&self) -> Option<&'static CatalogEntry> {
        lookup(&self.0)
    }
}

impl TryFrom<String> for EventType {
    type Error = EventTypeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<EventType> for String {
    fn from(value: EventType) -> Self {
        value.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn catalog_has_47_distinct_types_whose_name_is_kind_dash_action() {
        let names: HashSet<_> = CATALOG.iter().map(|e| e.name).collect();
        assert_eq!(names.len(), 47);
        for e in &CATALOG {
            let expected = match e.entity_kind {
                Some(kind) => format!("{kind}-{}", e.action),
                None => e.action.to_string(),
            };
            assert_eq!(e.name, expected);
            assert!(EventType::new(e.name).is_ok());
        }
    }

    #[test]
    fn the_seed_types_are_all_present() {
        let seed = include_str!("../testdata/seed-000-platform-audit.txt");
        let listed: Vec<&str> = seed
            .lines()
            .filter_map(|l| l.trim().strip_prefix('•'))
            .map(str::trim)
            .collect();
        assert_eq!(listed.len(), 47);
        for name in listed {
            assert!(lookup(name).is_some(), "{name} missing from the catalog");
        }
    }

    #[test]
    fn examples() {
        let q = lookup("query-created").unwrap();
        assert_eq!((q.entity_kind, q.action), (Some("query"), "created"));
        let pm = lookup("predictive-model-published").unwrap();
        assert_eq!(pm.entity_kind, Some("predictive-model"));
        assert!(EventType::new("my_log").unwrap().catalog_entry().is_none());
        assert!(EventType::new("executionSessionService.create").is_ok());
        assert!(EventType::new("a:b-c_d.e").is_ok());
    }

    #[test]
    fn rejects_hostile_names() {
        assert_eq!(EventType::new(""), Err(EventTypeError::Empty));
        assert_eq!(
            EventType::new("a b"),
            Err(EventTypeError::BadCharacter(' '))
        );
        assert_eq!(
            EventType::new("drop\u{0}table"),
            Err(EventTypeError::BadCharacter('\u{0}'))
        );
        assert_eq!(EventType::new("é"), Err(EventTypeError::BadCharacter('é')));
        assert_eq!(
            EventType::new("x".repeat(129)),
            Err(EventTypeError::TooLong(129))
        );
        assert!(EventType::new("x".repeat(128)).is_ok());
    }
}
