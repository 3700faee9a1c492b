//! Directory writes from the platform's own services: a login service records sessions as they
//! start and end, an admin service users and groups, over the logger's two transports.
//!
//! ```no_run
//! # async fn demo() -> Result<(), audit_client::directory::DirectoryError> {
//! use audit_client::{directory::Directory, Transport};
//! let directory = Directory::new(Transport::Http {
//!     url: "http://localhost:8080".into(),
//!     token: "a token with the directory scope".into(),
//! });
//! directory.upsert_group("g-1", "analysts", &[]).await?;
//! directory.upsert_user("u-1", "ann@example.com", Some("Ann"), &["g-1"]).await?;
//! directory.session_started("s-1", "u-1", Some("10.0.0.1"), None).await?;
//! directory.session_ended("s-1").await?;
//! # Ok(()) }
//! ```
//!
//! Unlike log records these calls wait for the write to be stored: a session the enricher does
//! not know yet holds back its events, so the caller should know when the join can happen.

use super::Transport;
use audit_schemas::control::{self, Operator};
use audit_schemas::ingest::directory::{self as write, DirectoryWrite, Kind};
use audit_schemas::ingest::FieldError;
use audit_schemas::Timestamp;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("invalid directory entry: {}", .0.iter().map(|e| format!("{} {}", e.path, e.reason)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("the directory write was not stored: {0}")]
    Send(String),
}

/// Writes directory entries through a [`Transport`].
pub struct Directory {
    transport: Transport,
    http: reqwest::Client,
}

impl Directory {
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            http: reqwest::Client::new(),
        }
    }

    /// A login: the session and the user it belongs to.
    pub async fn session_started(
        &self,
        id: &str,
        user_id: &str,
        ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<(), DirectoryError> {
        let body = json!({"user_id": user_id, "ip": ip, "user_agent": user_agent});
        self.put(Kind::Session, id, body).await
    }

    /// A logout: the session is deleted (a tombstone on the directory topic).
    pub async fn session_ended(&self, id: &str) -> Result<(), DirectoryError> {
        self.delete(Kind::Session, id).await
    }

    pub async fn upsert_user(
        &self,
        id: &str,
        login: &str,
        name: Option<&str>,
        group_ids: &[&str],
    ) -> Result<(), DirectoryError> {
        let body = json!({"login": login, "name": name, "group_ids": group_ids});
        self.put(Kind::User, id, body).await
    }

    pub async fn upsert_group(
        &self,
        id: &str,
        name: &str,
        parent_ids: &[&str],
    ) -> Result<(), DirectoryError> {
        let body = json!({"name": name, "parent_ids": parent_ids});
        self.put(Kind::Group, id, body).await
    }

    pub async fn delete_user(&self, id: &str) -> Result<(), DirectoryError> {
        self.delete(Kind::User, id).await
    }

    pub async fn delete_group(&self, id: &str) -> Result<(), DirectoryError> {
        self.delete(Kind::Group, id).await
    }

    async fn put(&self, kind: Kind, id: &str, body: Value) -> Result<(), DirectoryError> {
        // Validated here for both transports, so a bad call fails the same way everywhere.
        let record = write::put_from_json(kind, id, body.clone(), Timestamp::now())
            .map_err(DirectoryError::Invalid)?;
        match &self.transport {
            Transport::Kafka(publisher) => {
                let writes = [DirectoryWrite::Put(record)];
                publisher
                    .publish_directory(&writes, &control_events(&writes))
                    .await
                    .map_err(|e| DirectoryError::Send(e.to_string()))
            }
            Transport::Http { url, token } => {
                let request = self
                    .http
                    .put(path(url, kind, id))
                    .bearer_auth(token)
                    .json(&body);
                answer(request).await
            }
        }
    }

    async fn delete(&self, kind: Kind, id: &str) -> Result<(), DirectoryError> {
        let key = write::delete(kind, id).map_err(DirectoryError::Invalid)?;
        match &self.transport {
            Transport::Kafka(publisher) => {
                let writes = [DirectoryWrite::Delete(key)];
                publisher
                    .publish_directory(&writes, &control_events(&writes))
                    .await
                    .map_err(|e| DirectoryError::Send(e.to_string()))
            }
            Transport::Http { url, token } => {
                answer(self.http.delete(path(url, kind, id)).bearer_auth(token)).await
            }
        }
    }
}

/// Writes straight to Kafka are on record like the API's: a control event per write, naming
/// this process (the ingest API names the token's service instead).
fn control_events(writes: &[DirectoryWrite]) -> Vec<audit_schemas::RawAuditEvent> {
    let operator = Operator {
        id: format!(
            "audit-client@{}",
            whoami::fallible::hostname().unwrap_or_default()
        ),
        service: "audit-client".into(),
        authenticated_by: "kafka-access".into(),
        host: whoami::fallible::hostname().ok(),
        ip: None,
    };
    control::directory_changes(writes, false, |_| None)
        .iter()
        .map(|c| c.to_event(&operator, audit_schemas::redaction::built_in()))
        .collect()
}

fn path(url: &str, kind: Kind, id: &str) -> String {
    let kind = match kind {
        Kind::Session => "sessions",
        Kind::User => "users",
        Kind::Group => "groups",
    };
    let id: String = url_escape(id);
    format!("{}/v1/directory/{kind}/{id}", url.trim_end_matches('/'))
}

/// Percent-encodes everything but unreserved characters, so any id is one path segment.
fn url_escape(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn answer(request: reqwest::RequestBuilder) -> Result<(), DirectoryError> {
    let response = request
        .send()
        .await
        .map_err(|e| DirectoryError::Send(e.to_string()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(DirectoryError::Send(format!(
            "{}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_one_path_segment() {
        assert_eq!(
            path("http://h:1/", Kind::Session, "s 1/../x"),
            "http://h:1/v1/directory/sessions/s%201%2F..%2Fx"
        );
    }
}
