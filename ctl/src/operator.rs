//! Who is running auditctl, and the control events that put each of their changes on record.
//!
//! Every change auditctl makes (rules, directory, stream map) is published to the raw topic as a
//! control event (`audit_schemas::control`) naming the operator, the host and the old and new
//! values. The operator is, in order: the admin whose credential was presented
//! (`AUDITCTL_ADMIN_CREDENTIAL` or `--admin-credential-file`, checked against
//! `operator.admins[].credential_sha256`), the configured `operator.name`, or the OS user. With
//! `operator.require_admin_credential = true` nothing is changed without a valid credential.
//!
//! This identifies people at the tool; the boundary that stops someone from bypassing the tool
//! is the broker's ACLs on the rules and directory topics.

use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use audit_runtime::config::ConfigError;
use audit_schemas::control::{ControlChange, Operator};
use audit_schemas::AvroRecord;
use audit_schemas::RawAuditEvent;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

/// `[operator]`: how auditctl names the person making changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorSettings {
    /// The identity to record when no admin credential is presented (default: the OS user).
    pub name: Option<String>,
    /// Refuse every change unless an admin credential is presented.
    pub require_admin_credential: bool,
    /// Admins and the SHA-256 (hex) of their credentials; the credential itself is never stored.
    pub admins: Vec<Admin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub name: String,
    /// `sha256sum` of the credential, 64 hex digits.
    pub credential_sha256: String,
}

impl OperatorSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, a) in self.admins.iter().enumerate() {
            if a.name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("operator.admins[{i}].name"),
                    "must not be empty",
                ));
            }
            if a.credential_sha256.len() != 64
                || !a.credential_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(ConfigError::invalid(
                    format!("operator.admins[{i}].credential_sha256"),
                    "must be 64 hex digits (sha256sum of the credential)",
                ));
            }
        }
        if self.require_admin_credential && self.admins.is_empty() {
            return Err(ConfigError::invalid(
                "operator.require_admin_credential",
                "is set, but operator.admins is empty: nobody could make a change",
            ));
        }
        Ok(())
    }
}

/// Who the operator is, worked out only when a command changes something (reading needs no
/// credential).
pub struct Actor {
    pub settings: OperatorSettings,
    pub credential: Option<String>,
}

impl Actor {
    pub fn identify(&self) -> Result<Operator> {
        identify(&self.settings, self.credential.as_deref())
    }
}

/// Where the credential comes from: the file if given, else the environment.
pub fn presented_credential(file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin credential from {}", path.display()))?;
        return Ok(Some(text.trim().to_string()));
    }
    Ok(std::env::var("AUDITCTL_ADMIN_CREDENTIAL")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

/// The operator making changes, or an error when a credential is required and missing or wrong.
pub fn identify(settings: &OperatorSettings, credential: Option<&str>) -> Result<Operator> {
    let host = whoami::fallible::hostname().ok();
    let operator = |id: String, how: &str| Operator {
        id,
        service: "auditctl".into(),
        authenticated_by: how.into(),
        host: host.clone(),
        ip: None,
    };
    if let Some(credential) = credential {
        let digest = hex::encode(Sha256::digest(credential.as_bytes()));
        // Compared as digests: equal length, and the stored value is not the secret.
        let Some(admin) = settings
            .admins
            .iter()
            .find(|a| a.credential_sha256.eq_ignore_ascii_case(&digest))
        else {
            bail!("the admin credential presented matches none of operator.admins");
        };
        return Ok(operator(admin.name.clone(), "admin-credential"));
    }
    if settings.require_admin_credential {
        bail!(
            "operator.require_admin_credential is set: present an admin credential \
             (AUDITCTL_ADMIN_CREDENTIAL or --admin-credential-file)"
        );
    }
    if let Some(name) = &settings.name {
        return Ok(operator(name.clone(), "configured"));
    }
    Ok(operator(whoami::username(), "os-user"))
}

/// Publishes the control events of `changes` to the raw topic and waits for every ack. Called
/// after the changes themselves were acknowledged: an error here means a change is made but not
/// on record, which the caller reports as a failure.
pub async fn record(
    settings: &Settings,
    operator: &Operator,
    changes: &[ControlChange],
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let redactor = audit_schemas::redaction::built_in();
    let events: Vec<_> = changes
        .iter()
        .map(|change| change.to_event(operator, redactor))
        .collect();
    publish(settings, &events).await
}

/// Publishes control events to the raw topic and waits for every ack.
pub async fn publish(settings: &Settings, events: &[RawAuditEvent]) -> Result<()> {
    let topic = &settings.topics.raw.name;
    let producer = audit_runtime::kafka::producer(&settings.kafka, "auditctl")?;
    let mut encoded = Vec::with_capacity(events.len());
    for event in events {
        encoded.push((event.partition_key(), event.encode()?));
    }
    let deliveries: Vec<_> = encoded
        .iter()
        .map(|(key, value)| {
            producer.send(
                FutureRecord::<str, [u8]>::to(topic).key(key).payload(value),
                Duration::from_secs(30),
            )
        })
        .collect();
    for result in futures::future::join_all(deliveries).await {
        result.map_err(|(e, _)| e).with_context(|| {
            format!("the change was made, but its control event could not be published to {topic}")
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admins() -> OperatorSettings {
        OperatorSettings {
            name: Some("ops-team".into()),
            require_admin_credential: false,
            admins: vec![Admin {
                name: "alice".into(),
                credential_sha256: hex::encode(Sha256::digest(b"correct horse")),
            }],
        }
    }

    #[test]
    fn a_credential_names_its_admin_and_a_wrong_one_is_refused() {
        let s = admins();
        let op = identify(&s, Some("correct horse")).unwrap();
        assert_eq!(op.id, "alice");
        assert_eq!(op.authenticated_by, "admin-credential");
        let e = identify(&s, Some("wrong")).unwrap_err().to_string();
        assert!(e.contains("matches none"), "{e}");
        assert!(!e.contains("wrong"), "the credential is not echoed: {e}");
    }

    #[test]
    fn without_a_credential_the_configured_name_then_the_os_user() {
        let mut s = admins();
        assert_eq!(identify(&s, None).unwrap().id, "ops-team");
        s.name = None;
        let op = identify(&s, None).unwrap();
        assert_eq!(op.authenticated_by, "os-user");
        assert!(!op.id.is_empty());
        s.require_admin_credential = true;
        let e = identify(&s, None).unwrap_err().to_string();
        assert!(e.contains("require_admin_credential"), "{e}");
    }

    #[test]
    fn settings_name_the_bad_field() {
        let mut s = admins();
        s.admins[0].credential_sha256 = "abc".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("operator.admins[0].credential_sha256"), "{e}");
        let s = OperatorSettings {
            require_admin_credential: true,
            ..Default::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("operator.require_admin_credential"), "{e}");
    }
}
