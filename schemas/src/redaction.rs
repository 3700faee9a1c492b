//! Secret redaction. Secrets never reach Kafka: values under configured keys are replaced by
//! `"[NOT OUTPUT]"` (the marker the server product's own audit log uses) at ingest, and the
//! enricher enforces the same rule again in case a producer was misconfigured.

use crate::RawAuditEvent;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashSet;

/// What a redacted value becomes.
pub const REDACTED: &str = "[NOT OUTPUT]";

pub mod keys;
mod shapes;

/// The keys configuration adds by default. Every one of them is secret by the built-in rule
/// ([`keys`]) as well; the list stays so settings written for earlier versions mean the same.
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

/// The built-in rule with the default keys, for what has no settings of its own to follow:
/// dead letters, log lines, error messages and `config` output of every binary.
pub fn built_in() -> &'static Redactor {
    static BUILT_IN: std::sync::LazyLock<Redactor> = std::sync::LazyLock::new(Redactor::default);
    &BUILT_IN
}

/// The kind of credential `text` is shaped as (`"JWT"`, `"PEM private key"`, `"AWS access key
/// id"`, `"API token"`, `"Bearer token"`, `"Basic credential"`, `"URL with a password"`,
/// `"signed session cookie"`), or `None`. Only shapes that are unambiguously credentials count,
/// so it can judge ids, which are never redacted: UUIDs, hex hashes, `sess-123` or a random
/// base64url session id are not credentials by their shape (see [`crate::ingest`]).
pub fn credential_shape(text: &str) -> Option<&'static str> {
    let found = built_in().triggers.scan(text.as_bytes());
    if !found.any() {
        return None;
    }
    shapes::credential_kind(text.as_bytes(), found)
}

/// The `[redaction]` settings of the binaries that redact (producer, enricher).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionSettings {
    /// Keys redacted in addition to the built-in rule (keys naming a password, secret, token,
    /// key, credential, authorization, cookie, signature or connection string by their words;
    /// see the README). Compared as normalised keys: `badge number` matches `badgeNumber`.
    pub keys: Vec<String>,
    /// Keys never redacted although the rule calls them secret.
    pub keep: Vec<String>,
}

impl Default for RedactionSettings {
    fn default() -> Self {
        Self {
            keys: DEFAULT_SECRET_KEYS.iter().map(|k| k.to_string()).collect(),
            keep: Vec::new(),
        }
    }
}

impl RedactionSettings {
    pub fn redactor(&self) -> Redactor {
        Redactor::new(&self.keys).with_exceptions(&self.keep)
    }
}

/// Substrings one of which every secret key holds (case-insensitively): a key or a text with
/// none of them is passed over without splitting or parsing it.
const HINTS: &[&str] = &[
    "pass",
    "pin",
    "otp",
    "cvv",
    "cvc",
    "pwd",
    "secret",
    "token",
    "cred",
    "auth",
    "cookie",
    "signature",
    "sig",
    "key",
    "conn",
    "jwt",
    "bearer",
    // Session cookies by name (keys::SESSION_COOKIES): sessionid, JSESSIONID,
    // ASP.NET_SessionId; PHPSESSID ("conn" above covers connect.sid).
    "sessionid",
    "sessid",
];

/// Replaces the values of secret keys, at any depth: keys secret by meaning ([`keys`]), plus
/// configured additions, less configured exceptions (both compared as normalised keys).
#[derive(Debug, Clone)]
pub struct Redactor {
    /// False only for [`Redactor::disabled`].
    enabled: bool,
    additions: HashSet<String>,
    exceptions: HashSet<String>,
    /// Finds, in one pass, the hints of secret keys (and words of added keys) and the literal
    /// triggers of the shape rules.
    triggers: shapes::Triggers,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(DEFAULT_SECRET_KEYS)
    }
}

impl Redactor {
    /// The built-in rule plus `keys`.
    pub fn new<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let additions: HashSet<String> = keys
            .into_iter()
            .map(|k| keys::normalised(k.as_ref()))
            .filter(|k| !k.is_empty())
            .collect();
        let mut patterns: Vec<String> = HINTS.iter().map(|h| h.to_string()).collect();
        for k in &additions {
            patterns.extend(k.split('_').map(str::to_string));
        }
        patterns.sort();
        patterns.dedup();
        Self {
            enabled: true,
            additions,
            exceptions: HashSet::new(),
            triggers: shapes::Triggers::new(&patterns),
        }
    }

    /// A redactor that changes nothing: only for benchmarks that measure what redaction costs.
    /// No setting reaches it; the binaries always redact.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::new(std::iter::empty::<&str>())
        }
    }

    /// Keys never redacted even though the rule calls them secret (e.g. a `session_token_hint`
    /// that a platform uses for something public).
    pub fn with_exceptions<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.exceptions = keys
            .into_iter()
            .map(|k| keys::normalised(k.as_ref()))
            .collect();
        self
    }

    pub fn is_secret(&self, key: &str) -> bool {
        if !self.triggers.mentions_a_key(key.as_bytes()) {
            return false;
        }
        let normalised = keys::normalised(key);
        if self.exceptions.contains(&normalised) {
            return false;
        }
        self.additions.contains(&normalised) || keys::names_a_secret(key)
    }

    /// Redacts in place; returns how many values were changed (values already redacted do not
    /// count, so the enricher's second pass measures real leaks).
    pub fn redact_value(&self, value: &mut Value) -> usize {
        if !self.enabled {
            return 0;
        }
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
            Value::String(text) => self.redact_text(text),
            _ => 0,
        }
    }

    /// Replaces the secret-shaped parts of free text ([`shapes`]). A text that is a whole JSON
    /// document is parsed, redacted as JSON (keys and values) and re-serialised.
    pub fn redact_text(&self, text: &mut String) -> usize {
        if !self.enabled {
            return 0;
        }
        let found = self.triggers.scan(text.as_bytes());
        if !found.any() {
            return 0;
        }
        // JSON inside strings inside JSON...: parsed structurally a few levels deep, then judged
        // as text, so hostile nesting cannot exhaust the stack.
        let Some(_level) = EmbeddedLevel::enter() else {
            return self.redact_shapes(text, found);
        };
        if let Some(changed) = self.redact_embedded_json(text) {
            return changed;
        }
        let mut changed = 0;
        let mut found = found;
        if found.mentions_a_key() && text.contains('{') {
            changed += self.redact_objects_in_text(text);
            if changed > 0 {
                found = self.triggers.scan(text.as_bytes());
            }
        }
        changed + self.redact_shapes(text, found)
    }

    /// The shape and key/value rules over `text` ([`shapes::find`]).
    fn redact_shapes(&self, text: &mut String, found: shapes::Found) -> usize {
        let ranges = shapes::find(text.as_bytes(), &self.triggers, found, &|k| {
            self.is_secret(k)
        });
        if ranges.is_empty() {
            return 0;
        }
        let (bytes, changed) = shapes::replace(text.as_bytes(), ranges);
        if changed > 0 {
            *text = match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
        }
        changed
    }

    /// [`Redactor::redact_text`] for bytes that may not be text (a dead letter's original, a
    /// log line): UTF-8 is redacted as text, anything else by the shape and key/value rules
    /// over its bytes. Returns the bytes to keep and how many secrets were replaced.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> (Cow<'a, [u8]>, usize) {
        if !self.enabled {
            return (Cow::Borrowed(bytes), 0);
        }
        if let Ok(text) = std::str::from_utf8(bytes) {
            let mut owned = text.to_string();
            let changed = self.redact_text(&mut owned);
            return if changed > 0 {
                (Cow::Owned(owned.into_bytes()), changed)
            } else {
                (Cow::Borrowed(bytes), 0)
            };
        }
        let found = self.triggers.scan(bytes);
        if !found.any() {
            return (Cow::Borrowed(bytes), 0);
        }
        let ranges = shapes::find(bytes, &self.triggers, found, &|k| self.is_secret(k));
        if ranges.is_empty() {
            return (Cow::Borrowed(bytes), 0);
        }
        let (out, changed) = shapes::replace(bytes, ranges);
        (Cow::Owned(out), changed)
    }

    /// JSON objects inside free text (`request body: {...} failed`): each `{` that starts a
    /// JSON value is parsed, redacted as JSON and written back in place. Bounded, so a text of
    /// many braces costs little.
    fn redact_objects_in_text(&self, text: &mut String) -> usize {
        const MAX_ATTEMPTS: usize = 64;
        let mut changed = 0;
        let mut from = 0;
        for _ in 0..MAX_ATTEMPTS {
            let Some(start) = text[from..].find('{').map(|i| from + i) else {
                break;
            };
            let mut values =
                serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
            match values.next() {
                Some(Ok(mut value)) => {
                    let end = start + values.byte_offset();
                    let n = self.redact_value(&mut value);
                    if n > 0 {
                        let printed = value.to_string();
                        text.replace_range(start..end, &printed);
                        from = start + printed.len();
                        changed += n;
                    } else {
                        from = end;
                    }
                }
                _ => from = start + 1,
            }
        }
        changed
    }

    fn redact_embedded_json(&self, text: &mut String) -> Option<usize> {
        let trimmed = text.trim();
        let document = (trimmed.starts_with('{') && trimmed.ends_with('}'))
            || (trimmed.starts_with('[') && trimmed.ends_with(']'));
        if !document {
            return None;
        }
        let mut value: Value = serde_json::from_str(trimmed).ok()?;
        let changed = self.redact_value(&mut value);
        if changed > 0 {
            // Whitespace around the document (a log line's newline) stays where it was.
            let start = text.len() - text.trim_start().len();
            let end = text.trim_end().len();
            *text = format!("{}{value}{}", &text[..start], &text[end..]);
        }
        Some(changed)
    }

    /// Redacts every text of an event that a sender writes freely: params and response (JSON
    /// text), message, error, entity names and the user agent. Ids are left alone: they are
    /// joined on, and a secret-shaped id is refused at ingest instead
    /// ([`crate::ingest::secret_shaped_id`]).
    pub fn redact_event(&self, event: &mut RawAuditEvent) -> usize {
        if !self.enabled {
            return 0;
        }
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
        let texts = event
            .message
            .iter_mut()
            .chain(event.error.iter_mut().flat_map(|e| {
                e.code
                    .iter_mut()
                    .chain(e.message.iter_mut())
                    .chain(e.stack_trace.iter_mut())
            }))
            .chain(event.entities.iter_mut().filter_map(|e| e.name.as_mut()))
            .chain(
                event
                    .client
                    .iter_mut()
                    .filter_map(|c| c.user_agent.as_mut()),
            );
        for text in texts {
            changed += self.redact_text(text);
        }
        changed
    }

    /// A JSON text (a param, a response): parsed and redacted as JSON when it may hold a
    /// secret; a text that does not parse is redacted as free text.
    fn redact_json_text(&self, text: &mut String) -> usize {
        if !self.triggers.scan(text.as_bytes()).any() {
            return 0;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(mut value) => {
                let changed = self.redact_value(&mut value);
                if changed > 0 {
                    *text = value.to_string();
                }
                changed
            }
            Err(_) => self.redact_text(text),
        }
    }
}

/// How many texts are being redacted inside one another on this thread (JSON carried in a
/// string of JSON carried in a string...); entering fails beyond [`EmbeddedLevel::MAX`].
struct EmbeddedLevel;

thread_local! {
    static EMBEDDED_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl EmbeddedLevel {
    const MAX: usize = 4;

    fn enter() -> Option<Self> {
        EMBEDDED_DEPTH.with(|d| {
            if d.get() >= Self::MAX {
                return None;
            }
            d.set(d.get() + 1);
            Some(EmbeddedLevel)
        })
    }
}

impl Drop for EmbeddedLevel {
    fn drop(&mut self) {
        EMBEDDED_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
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
    fn configured_keys_add_to_the_rule_and_exceptions_keep() {
        let r = Redactor::new(["pin", "badge number"]).with_exceptions(["session_token_hint"]);
        let mut v = json!({"PIN": "1234", "badgeNumber": "77", "password": "x",
                           "sessionTokenHint": "public", "token_count": 3});
        assert_eq!(r.redact_value(&mut v), 3);
        assert_eq!(v["PIN"], REDACTED);
        assert_eq!(v["badgeNumber"], REDACTED);
        assert_eq!(v["password"], REDACTED);
        assert_eq!(v["sessionTokenHint"], "public");
        assert_eq!(v["token_count"], 3);
    }

    /// Every key the key rule calls secret must also pass the redactor's prefilter (its hints).
    #[test]
    fn the_prefilter_lets_every_secret_word_through() {
        let r = Redactor::default();
        let pairs: Vec<String> = keys::SECRET_PAIRS
            .iter()
            .map(|(a, b)| format!("{a}_{b}"))
            .collect();
        let all = keys::SECRET_WORDS
            .iter()
            .chain(keys::RUN_IN)
            .chain(&[
                "sessionid",
                "JSESSIONID",
                "PHPSESSID",
                "connect.sid",
                "ASP.NET_SessionId",
            ])
            .map(|w| w.to_string())
            .chain(pairs);
        for key in all {
            let key = key.as_str();
            assert!(r.is_secret(key), "{key}");
            let mut text = format!("{key}=v4lue9x");
            assert_eq!(r.redact_text(&mut text), 1, "{text}");
        }
    }

    #[test]
    fn the_issue_keys_are_redacted() {
        let r = Redactor::default();
        let mut v = json!({"api_key": "a", "Authorization": "Bearer b", "client_secret": "c",
                           "access_token": "d", "secret_key": "e", "db_password": "f",
                           "passwd": "g", "privateKey": "h", "rows": 10});
        assert_eq!(r.redact_value(&mut v), 8);
        assert_eq!(v["rows"], 10);
    }
}
