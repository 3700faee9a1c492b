//! Secret redaction. Secrets never reach Kafka: values under configured keys are replaced by
//! `"[NOT OUTPUT]"` (the marker the server product's own audit log uses) at ingest, and the
//! enricher enforces the same rule again in case a producer was misconfigured.

use crate::RawAuditEvent;
use aho_corasick::AhoCorasick;
use serde_json::Value;
use std::collections::HashSet;

/// What a redacted value becomes.
pub const REDACTED: &str = "[NOT OUTPUT]";

/// The keys redacted when configuration names none.
pub const DEFAULT_SECRET_KEYS: [&str; 8] = [
    "password",
    "oldPassword",
    "newPassword",
    "secret",
    "token",
    "accessKey",
    "secretKey",
    "credentials",
];

/// Replaces the values of secret keys, at any depth, case-insensitively.
#[derive(Debug, Clone)]
pub struct Redactor {
    keys: HashSet<String>,
    /// Finds any key's name in a text, case-insensitively, in one pass: most texts mention none
    /// and are skipped without parsing or allocating. `None` only if the automaton could not be
    /// built (size limits), and then a slower scan does the same job.
    mentions: Option<AhoCorasick>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(DEFAULT_SECRET_KEYS)
    }
}

impl Redactor {
    pub fn new<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys: HashSet<String> = keys
            .into_iter()
            .map(|k| k.as_ref().to_ascii_lowercase())
            .collect();
        let mentions = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&keys)
            .ok();
        Self { keys, mentions }
    }

    pub fn is_secret(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k.eq_ignore_ascii_case(key))
    }

    fn mentions_a_key(&self, text: &str) -> bool {
        match &self.mentions {
            Some(automaton) => automaton.is_match(text),
            None => {
                let lower = text.to_ascii_lowercase();
                self.keys.iter().any(|k| lower.contains(k.as_str()))
            }
        }
    }

    /// Redacts in place; returns how many values were changed (values already redacted do not
    /// count, so the enricher's second pass measures real leaks).
    pub fn redact_value(&self, value: &mut Value) -> usize {
        match value {
            Value::Object(map) => {
                let mut changed = 0;
                // Configuration-property shape seen in the seed's logs:
                // {"name": "password", "value": "..."}.
                let named_secret = map
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| self.is_secret(n));
                for (key, v) in map.iter_mut() {
                    if self.is_secret(key) || (named_secret && key == "value" && !v.is_null()) {
                        changed += replace(v);
                    } else {
                        changed += self.redact_value(v);
                    }
                }
                changed
            }
            Value::Array(items) => items.iter_mut().map(|v| self.redact_value(v)).sum(),
            _ => 0,
        }
    }

    /// Redacts an event's params and response (both JSON text). Text that is not JSON cannot
    /// hold a keyed secret and is left alone.
    pub fn redact_event(&self, event: &mut RawAuditEvent) -> usize {
        let mut changed = 0;
        for (key, text) in event.params.iter_mut() {
            if self.is_secret(key) {
                let redacted = Value::String(REDACTED.to_string()).to_string();
                if *text != redacted {
                    *text = redacted;
                    changed += 1;
                }
            } else {
                changed += self.redact_json_text(text);
            }
        }
        if let Some(text) = event.response.as_mut() {
            changed += self.redact_json_text(text);
        }
        changed
    }

    fn redact_json_text(&self, text: &mut String) -> usize {
        // Cheap pre-checks: a text without '{' cannot contain a key, nor one that does not
        // mention any secret key's name; most params are skipped without parsing.
        if !text.contains('{') {
            return 0;
        }
        if !self.mentions_a_key(text) {
            return 0;
        }
        let Ok(mut value) = serde_json::from_str::<Value>(text) else {
            return 0;
        };
        let changed = self.redact_value(&mut value);
        if changed > 0 {
            *text = value.to_string();
        }
        changed
    }
}

fn replace(v: &mut Value) -> usize {
    if v.as_str() == Some(REDACTED) {
        0
    } else {
        *v = Value::String(REDACTED.to_string());
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_at_any_depth_and_case() {
        let r = Redactor::default();
        let mut v = json!({
            "user": {"name": "a", "PASSWORD": "hunter2"},
            "list": [{"token": 1}, {"deep": {"accessKey": {"nested": true}}}],
            "oldPassword": "[NOT OUTPUT]",
            "harmless": "password"
        });
        assert_eq!(r.redact_value(&mut v), 3);
        assert_eq!(v["user"]["PASSWORD"], REDACTED);
        assert_eq!(v["list"][0]["token"], REDACTED);
        assert_eq!(v["list"][1]["deep"]["accessKey"], REDACTED);
        assert_eq!(v["harmless"], "password");
    }

    #[test]
    fn redacts_named_property_values() {
        let r = Redactor::default();
        let mut v = json!({"x": {"name": "password", "value": "s3cret", "type": "Password"}});
        assert_eq!(r.redact_value(&mut v), 1);
        assert_eq!(v["x"]["value"], REDACTED);
        assert_eq!(v["x"]["type"], "Password");
    }

    #[test]
    fn custom_keys_replace_defaults() {
        let r = Redactor::new(["pin"]);
        let mut v = json!({"pin": "1234", "password": "kept"});
        assert_eq!(r.redact_value(&mut v), 1);
        assert_eq!(v["password"], "kept");
    }
}
