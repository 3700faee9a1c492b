//! Which keys name a secret: by meaning, not by spelling.
//!
//! A key is split into lowercase words at `_ - . space` and camelCase boundaries
//! (`clientSecret`, `client_secret`, `Client-Secret` -> `client secret`). It names a secret when
//!
//! - one of its words is a secret word (`password`, `passwd`, `pwd`, `passphrase`, `secret`,
//!   `token`, `credential(s)`, `authorization`, `cookie`, `signature`, `apikey`, ...), or two
//!   neighbouring words make a secret term (`api key`, `access key`, `private key`,
//!   `connection string`), or its letters run a strong word into another (`dbpassword`,
//!   `apikey`, `accesstoken`);
//! - **unless** its last word says the key describes the secret instead of holding it: `count`,
//!   `policy`, `type`, `length`, `expiry`, `expires`, `ttl`, `name`, `url`, `hint`, `format`,
//!   `strength`, `required`, `enabled`, ... So `token_count`, `password_policy`,
//!   `tokenType` and `password_expires_at` are kept, while `password`, `access_token` and
//!   `reset_password_token` are not;
//! - or the whole key is the name of a session cookie whose value is the session itself
//!   (`sessionid`, `JSESSIONID`, `PHPSESSID`, `connect.sid`, `ASP.NET_SessionId`): those are
//!   credentials although the last word may be `id`. `session_id` and `sessionId` stay ids:
//!   they name the session an event belongs to, and the platform's session cookie is not
//!   spelled that way.
//!
//! Operators add keys (matched as whole normalised keys) and exceptions in the settings.

/// Words that alone make a key secret.
pub(crate) const SECRET_WORDS: &[&str] = &[
    "password",
    "passwords",
    "passwd",
    "pwd",
    "passphrase",
    "passcode",
    "secret",
    "secrets",
    "token",
    "tokens",
    "credential",
    "credentials",
    "creds",
    "authorization",
    "auth",
    "cookie",
    "cookies",
    "signature",
    "apikey",
    "privatekey",
    "accesskey",
    "secretkey",
    "sessionkey",
    "jwt",
    "bearer",
    "sig",
    "pass",
    "otp",
    "totp",
    "pin",
    "cvv",
    "cvc",
];

/// Neighbouring words that together name a secret.
pub(crate) const SECRET_PAIRS: &[(&str, &str)] = &[
    ("api", "key"),
    ("access", "key"),
    ("private", "key"),
    ("secret", "key"),
    ("signing", "key"),
    ("encryption", "key"),
    ("master", "key"),
    ("session", "key"),
    ("connection", "string"),
    ("conn", "string"),
    ("conn", "str"),
    ("account", "key"),
    ("storage", "key"),
    ("shared", "key"),
];

/// Strong words found even run into other letters (`dbpassword`, `myapikey`).
pub(crate) const RUN_IN: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "credential",
    "apikey",
    "privatekey",
    "accesskey",
    "accesstoken",
    "refreshtoken",
    "authtoken",
    "idtoken",
];

/// Session cookies by their usual names, as normalised keys: Django's `sessionid`, Java's
/// `JSESSIONID`, PHP's `PHPSESSID`, Express's `connect.sid`, ASP.NET's `ASP.NET_SessionId`. Their
/// values are bearer credentials, whatever the key's last word says. `session_id` and
/// `sessionId` normalise to `session_id`, which is not one of them.
pub(crate) const SESSION_COOKIES: &[&str] = &[
    "sessionid",
    "jsessionid",
    "phpsessid",
    "connect_sid",
    "asp_net_session_id",
];

/// A key ending in one of these describes a secret rather than holding it.
const DESCRIBING_WORDS: &[&str] = &[
    "count",
    "counts",
    "policy",
    "policies",
    "type",
    "types",
    "kind",
    "length",
    "len",
    "size",
    "expiry",
    "expires",
    "expiration",
    "expired",
    "ttl",
    "at",
    "time",
    "date",
    "name",
    "names",
    "url",
    "uri",
    "endpoint",
    "hint",
    "format",
    "strength",
    "required",
    "enabled",
    "min",
    "max",
    "rule",
    "rules",
    "version",
    "id",
    "ids",
    "present",
    "set",
    "changed",
    "updated",
    "created",
    "file",
    "path",
    "field",
    "fields",
    "label",
    "description",
    "mode",
    "method",
    "methods",
    "scheme",
    "provider",
    "status",
    "valid",
    "used",
    "limit",
    "rate",
    "ratio",
    "percent",
    "percentage",
];

/// The key as lowercase words (see the module docs).
pub fn words(key: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = key.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            continue;
        }
        let boundary = c.is_uppercase()
            && i > 0
            && (chars[i - 1].is_lowercase()
                || chars[i - 1].is_ascii_digit()
                || (chars[i - 1].is_uppercase()
                    && chars.get(i + 1).is_some_and(|n| n.is_lowercase())));
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The key normalised for exact matches against configured keys: its words joined by `_`.
pub fn normalised(key: &str) -> String {
    words(key).join("_")
}

/// Whether the built-in rule calls `key` a secret.
pub fn names_a_secret(key: &str) -> bool {
    let words = words(key);
    let Some(last) = words.last() else {
        return false;
    };
    let normalised = words.join("_");
    if SESSION_COOKIES.contains(&normalised.as_str()) {
        return true;
    }
    if words.len() > 1 && DESCRIBING_WORDS.contains(&last.as_str()) {
        return false;
    }
    if words.iter().any(|w| SECRET_WORDS.contains(&w.as_str())) {
        return true;
    }
    if words
        .windows(2)
        .any(|p| SECRET_PAIRS.contains(&(p[0].as_str(), p[1].as_str())))
    {
        return true;
    }
    let joined: String = words.concat();
    RUN_IN.iter().any(|w| joined.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_case_separators_and_acronyms() {
        assert_eq!(words("clientSecret"), ["client", "secret"]);
        assert_eq!(words("client_secret"), ["client", "secret"]);
        assert_eq!(words("Client-Secret"), ["client", "secret"]);
        assert_eq!(words("APIKey"), ["api", "key"]);
        assert_eq!(words("x.auth.TOKEN"), ["x", "auth", "token"]);
        assert_eq!(words("oauth2Token"), ["oauth2", "token"]);
        assert_eq!(normalised("accessKeyId"), "access_key_id");
    }

    #[test]
    fn secrets_by_meaning() {
        for key in [
            "password",
            "oldPassword",
            "newPassword",
            "db_password",
            "dbpassword",
            "passwd",
            "pwd",
            "secret",
            "client_secret",
            "secretKey",
            "secret_key",
            "token",
            "access_token",
            "refreshToken",
            "id_token",
            "reset_password_token",
            "api_key",
            "apiKey",
            "x-api-key",
            "accessKey",
            "privateKey",
            "private_key",
            "Authorization",
            "proxy-authorization",
            "cookie",
            "Set-Cookie",
            "credentials",
            "signature",
            "connection_string",
            "connectionString",
            "passphrase",
            "auth",
            "pass",
            "db_pass",
            "smtpPass",
            "otp",
            "totp_secret",
            "pin",
            "card_cvv",
            "sessionid",
            "JSESSIONID",
            "PHPSESSID",
            "connect.sid",
            "ASP.NET_SessionId",
        ] {
            assert!(names_a_secret(key), "{key} should be secret");
        }
    }

    #[test]
    fn look_alikes_are_kept() {
        for key in [
            "token_count",
            "tokenCount",
            "password_policy",
            "passwordPolicy",
            "tokenType",
            "token_type",
            "password_expires_at",
            "secret_name",
            "token_url",
            "auth_method",
            "password_length",
            "cookie_enabled",
            "session_id",
            "keyboard",
            "monkey",
            "tokenizer",
            "author",
            "passage",
            "user",
            "key",
            "primary_key",
            "sort_key",
            "pass_rate",
            "passed",
            "passing",
            "spin",
            "pinned",
            "otp_enabled",
            "auth_methods",
            "sessionId",
            "session-id",
            "",
        ] {
            assert!(!names_a_secret(key), "{key} should be kept");
        }
    }
}
