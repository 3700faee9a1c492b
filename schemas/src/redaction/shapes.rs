//! Secrets found by their shape inside text, wherever a string value, a message, a stack trace,
//! a response, a dead letter or a log line carries them.
//!
//! Each rule finds the secret part of a match and only that part is replaced, so the text around
//! it stays readable (`Authorization: Bearer [NOT OUTPUT]`, `postgres://app:[NOT OUTPUT]@db`):
//!
//! | rule | finds | replaces |
//! |---|---|---|
//! | scheme | `Bearer <token>`, `Basic <base64 of user:password>` | the credential |
//! | jwt | `eyJ….eyJ….…` (a signed or encrypted JSON web token) | the token |
//! | aws key id | `AKIA…`, `ASIA…` and the other IAM prefixes, 20 characters | the id |
//! | aws secret | a 40-character base64 run with upper, lower case and digits | the run |
//! | vendor | GitHub, GitLab, Slack, Stripe, Google API, npm and SendGrid tokens by prefix | the token |
//! | pem | `-----BEGIN … PRIVATE KEY-----` blocks (certificates are public and stay) | the body |
//! | url | `scheme://user:password@host` | the password |
//! | key/value | `key=value`, `key: value`, `"key": "value"` whose key is secret by name | the value |
//!
//! Cheap first: literal triggers (one Aho-Corasick pass) decide which rules can match at all, so
//! a text that mentions none of them costs one scan and no regex.

use aho_corasick::AhoCorasick;
use regex::bytes::Regex;
use std::ops::Range;
use std::sync::LazyLock;

use super::REDACTED;

/// The shape rules that have literal triggers; bit positions in a trigger mask.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Rule {
    Scheme = 0,
    Jwt = 1,
    AwsKeyId = 2,
    Pem = 3,
    Url = 4,
    Vendor = 5,
}

const TRIGGERS: &[(&str, Rule)] = &[
    ("bearer", Rule::Scheme),
    ("basic", Rule::Scheme),
    ("eyj", Rule::Jwt),
    ("akia", Rule::AwsKeyId),
    ("asia", Rule::AwsKeyId),
    ("aroa", Rule::AwsKeyId),
    ("aida", Rule::AwsKeyId),
    ("agpa", Rule::AwsKeyId),
    ("anpa", Rule::AwsKeyId),
    ("anva", Rule::AwsKeyId),
    ("aipa", Rule::AwsKeyId),
    ("abia", Rule::AwsKeyId),
    ("acca", Rule::AwsKeyId),
    ("a3t", Rule::AwsKeyId),
    ("-----begin", Rule::Pem),
    ("://", Rule::Url),
    ("ghp_", Rule::Vendor),
    ("gho_", Rule::Vendor),
    ("ghu_", Rule::Vendor),
    ("ghs_", Rule::Vendor),
    ("ghr_", Rule::Vendor),
    ("github_pat_", Rule::Vendor),
    ("glpat-", Rule::Vendor),
    ("xox", Rule::Vendor),
    ("_live_", Rule::Vendor),
    ("_test_", Rule::Vendor),
    ("aiza", Rule::Vendor),
    ("npm_", Rule::Vendor),
    ("sg.", Rule::Vendor),
];

static TRIGGER_AUTOMATON: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(TRIGGERS.iter().map(|(t, _)| t))
        .ok()
});

/// Compiles one of this module's fixed patterns. They are constants covered by the unit tests,
/// so a failure is a programming error caught by every test run, never a runtime condition.
fn pattern(re: &str) -> Regex {
    match Regex::new(re) {
        Ok(r) => r,
        Err(e) => panic!("redaction pattern {re:?} does not compile: {e}"),
    }
}

static SCHEME: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"(?i-u)\b(bearer|basic)(?:[ \t]+|%20|\+)([A-Za-z0-9\-._~+/]+=*)"));
static JWT: LazyLock<Regex> = LazyLock::new(|| {
    pattern(r"(?-u)\beyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}(?:\.[A-Za-z0-9_\-]*){1,3}")
});
static AWS_KEY_ID: LazyLock<Regex> = LazyLock::new(|| {
    pattern(
        r"(?-u)\b(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b",
    )
});
static VENDOR: LazyLock<Regex> = LazyLock::new(|| {
    pattern(concat!(
        r"(?-u)\b(?:gh[pousr]_[A-Za-z0-9]{36,255}",
        r"|github_pat_[A-Za-z0-9_]{22,255}",
        r"|glpat-[A-Za-z0-9_\-]{20,}",
        r"|xox[abposr]-[A-Za-z0-9\-]{10,}",
        r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",
        r"|AIza[0-9A-Za-z_\-]{35}",
        r"|npm_[A-Za-z0-9]{36}",
        r"|SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})",
    ))
});
static PEM: LazyLock<Regex> = LazyLock::new(|| {
    pattern(concat!(
        r"(?s-u)-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
        r"(.*?)",
        r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\z)",
    ))
});
static URL: LazyLock<Regex> = LazyLock::new(|| {
    pattern(r#"(?-u)[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@"'<>\\]*:([^\s/?#"'<>\\]+)@"#)
});
/// A key, its separator (possibly with ANSI colour codes around it, as log lines have them) and
/// the start of its value. The value itself is read by [`value_at`].
static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    pattern(concat!(
        r#"(?-u)(?:^|[^A-Za-z0-9_\-.]|\x1b\[[0-9;]*m)\\?["']?([A-Za-z][A-Za-z0-9_.\-]{0,63})\\?["']?"#,
        r"(?:\x1b\[[0-9;]*m)*[ \t]*[=:](?:\x1b\[[0-9;]*m)*[ \t]*",
    ))
});

/// Authorization schemes that come before the credential in a `key: value` pair.
const SCHEMES: &[&str] = &[
    "bearer",
    "basic",
    "digest",
    "token",
    "negotiate",
    "ntlm",
    "hmac",
    "aws4-hmac-sha256",
    "apikey",
];

/// Finds the byte ranges of secrets in `text`; `is_secret_key` decides which keys of key/value
/// pairs are secret, `mentions_key` whether the text can hold such a key at all.
pub(crate) fn find(
    text: &[u8],
    mentions_key: bool,
    is_secret_key: &dyn Fn(&str) -> bool,
) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let rules = triggered(text);
    if rules & bit(Rule::Scheme) != 0 {
        for c in SCHEME.captures_iter(text) {
            if let Some(credential) = c.get(2) {
                let scheme = c.get(1).map_or(&b""[..], |m| m.as_bytes());
                if scheme_credential(scheme, credential.as_bytes()) {
                    found.push(credential.range());
                }
            }
        }
    }
    if rules & bit(Rule::Jwt) != 0 {
        found.extend(JWT.find_iter(text).map(|m| m.range()));
    }
    if rules & bit(Rule::AwsKeyId) != 0 {
        found.extend(AWS_KEY_ID.find_iter(text).map(|m| m.range()));
    }
    if rules & bit(Rule::Vendor) != 0 {
        found.extend(VENDOR.find_iter(text).map(|m| m.range()));
    }
    if rules & bit(Rule::Pem) != 0 {
        found.extend(
            PEM.captures_iter(text)
                .filter_map(|c| c.get(1))
                .filter(|body| !body.as_bytes().iter().all(u8::is_ascii_whitespace))
                .map(|m| m.range()),
        );
    }
    if rules & bit(Rule::Url) != 0 {
        found.extend(
            URL.captures_iter(text)
                .filter_map(|c| c.get(1))
                .map(|m| m.range()),
        );
    }
    aws_secret_runs(text, &mut found);
    if mentions_key && text.iter().any(|&b| b == b'=' || b == b':') {
        key_values(text, is_secret_key, &mut found);
    }
    found
}

/// Whether any rule can match `text` at all: the cheap check before [`find`].
pub(crate) fn may_hold_a_secret(text: &[u8], mentions_key: bool) -> bool {
    mentions_key || triggered(text) != 0 || has_run_of_40(text)
}

fn has_run_of_40(text: &[u8]) -> bool {
    let mut run = 0;
    for &b in text {
        if b.is_ascii_alphanumeric() || b == b'/' || b == b'+' {
            run += 1;
            if run == 40 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

fn bit(rule: Rule) -> u32 {
    1 << rule as u8
}

/// Which rules' triggers occur in `text`, as a bit mask.
fn triggered(text: &[u8]) -> u32 {
    let all = (1 << (Rule::Vendor as u8 + 1)) - 1;
    let Some(automaton) = TRIGGER_AUTOMATON.as_ref() else {
        // Without the automaton every rule runs: slower, never weaker.
        return all;
    };
    let mut mask = 0;
    for m in automaton.find_overlapping_iter(text) {
        mask |= bit(TRIGGERS[m.pattern().as_usize()].1);
        if mask == all {
            break;
        }
    }
    mask
}

/// Whether what follows `Bearer`/`Basic` is a credential rather than prose ("basic settings",
/// "bearer of news"): a Basic credential decodes to `user:password`; a bearer token has a digit
/// or is long.
fn scheme_credential(scheme: &[u8], credential: &[u8]) -> bool {
    if credential.len() < 8 {
        return false;
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        use base64::Engine;
        let trimmed: Vec<u8> = credential.iter().copied().filter(|&b| b != b'=').collect();
        return base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(&trimmed)
            .is_ok_and(|d| d.contains(&b':'))
            || credential.iter().any(u8::is_ascii_digit);
    }
    credential.iter().any(u8::is_ascii_digit) || credential.len() >= 24
}

/// AWS secret access keys: exactly 40 characters of `[A-Za-z0-9/+]` standing alone, with upper
/// and lower case letters and digits (a hex SHA-1 has one case only, so commit ids stay).
fn aws_secret_runs(text: &[u8], found: &mut Vec<Range<usize>>) {
    const LEN: usize = 40;
    let in_run = |b: u8| b.is_ascii_alphanumeric() || b == b'/' || b == b'+';
    // Characters that would make the run part of a longer token (base64 padding, base64url).
    let joins = |b: u8| in_run(b) || b == b'=' || b == b'_' || b == b'-';
    let mut i = 0;
    while i < text.len() {
        if !in_run(text[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < text.len() && in_run(text[i]) {
            i += 1;
        }
        if i - start != LEN {
            continue;
        }
        if start > 0 && joins(text[start - 1]) || i < text.len() && joins(text[i]) {
            continue;
        }
        let run = &text[start..i];
        if run.iter().any(u8::is_ascii_uppercase)
            && run.iter().any(u8::is_ascii_lowercase)
            && run.iter().any(u8::is_ascii_digit)
        {
            found.push(start..i);
        }
    }
}

fn key_values(text: &[u8], is_secret_key: &dyn Fn(&str) -> bool, found: &mut Vec<Range<usize>>) {
    let mut at = 0;
    while at < text.len() {
        let Some(c) = KEY_VALUE.captures_at(text, at) else {
            break;
        };
        let (Some(whole), Some(key)) = (c.get(0), c.get(1)) else {
            break;
        };
        // Non-secret keys: go on right after the key, so `a=password=x` still finds the second.
        at = key.end().max(at + 1);
        let key_text = std::str::from_utf8(key.as_bytes()).unwrap_or_default();
        if !is_secret_key(key_text) {
            continue;
        }
        if let Some(value) = value_at(text, whole.end(), key_text) {
            at = value.end.max(at);
            found.push(value);
        }
    }
}

/// The value starting at `start`: quoted (the inside), or up to the next delimiter. A value that
/// is an authorization scheme takes the credential after it along; a cookie runs to the line end.
fn value_at(text: &[u8], start: usize, key: &str) -> Option<Range<usize>> {
    let rest = &text[start..];
    if rest.starts_with(REDACTED.as_bytes()) {
        return None;
    }
    let quoted = |open: &[u8], close: &[u8]| -> Option<Range<usize>> {
        let body = rest.strip_prefix(open)?;
        let mut i = 0;
        while i < body.len() {
            if body[i..].starts_with(close) {
                break;
            }
            if body[i] == b'\\' && close.len() == 1 {
                i += 1;
            }
            i += 1;
        }
        let end = i.min(body.len());
        (end > 0).then(|| start + open.len()..start + open.len() + end)
    };
    let range = if rest.starts_with(b"\\\"") {
        quoted(b"\\\"", b"\\\"")?
    } else if rest.starts_with(b"\"") {
        quoted(b"\"", b"\"")?
    } else if rest.starts_with(b"'") {
        quoted(b"'", b"'")?
    } else {
        let cookie = super::keys::words(key)
            .last()
            .is_some_and(|w| w.starts_with("cookie"));
        let stops: &[u8] = if cookie {
            b"\r\n\"\\"
        } else {
            b" \t\r\n,;&\"'<>{}[]()\\"
        };
        let end = rest
            .iter()
            .position(|b| stops.contains(b))
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        let mut end = end;
        if SCHEMES
            .iter()
            .any(|s| rest[..end].eq_ignore_ascii_case(s.as_bytes()))
        {
            let gap = rest[end..].iter().take_while(|&&b| b == b' ').count();
            if rest[end + gap..].starts_with(REDACTED.as_bytes()) {
                return None;
            }
            let credential = rest[end + gap..]
                .iter()
                .position(|b| stops.contains(b))
                .unwrap_or(rest.len() - end - gap);
            if gap > 0 && credential > 0 {
                end += gap + credential;
            }
        }
        start..start + end
    };
    (&text[range.clone()] != REDACTED.as_bytes()).then_some(range)
}

/// `text` with every range replaced by the marker (ranges may overlap and come in any order);
/// returns how many separate secrets were replaced.
pub(crate) fn replace(text: &[u8], mut ranges: Vec<Range<usize>>) -> (Vec<u8>, usize) {
    ranges.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    let mut count = 0;
    for r in merged {
        out.extend_from_slice(&text[at..r.start]);
        if &text[r.clone()] != REDACTED.as_bytes() {
            count += 1;
        }
        out.extend_from_slice(REDACTED.as_bytes());
        at = r.end;
    }
    out.extend_from_slice(&text[at..]);
    (out, count)
}
