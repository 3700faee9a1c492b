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
//! | key/value | `key=value`, `key: value`, `"key": "value"`, `"key" => "value"`, `user[key]=value` whose key is secret by name | the value (an array or object whole) |
//! | query code | `?code=…`, `&code=…`, `#code=…`: an OAuth authorization code | the code |
//! | session cookie | `s%3A<id>.<signature>` (Express signed cookie) | the cookie |
//!
//! Percent-encoded text is decoded (`%253D` -> `%3D` -> `=`, at most three times) and every rule
//! runs over it too; a secret found there is replaced where it stands in the encoded text.
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
    /// A word of a secret key occurs: key/value pairs may hold a secret.
    KeyValue = 6,
    /// A run of 40 base64 characters: may be an AWS secret key.
    LongRun = 7,
    /// `?code=`, `&code=`, `#code=`: an OAuth authorization code in a query string or fragment.
    QueryCode = 8,
    /// `s%3A…`: an Express signed session cookie.
    SessionCookie = 9,
    /// A percent-escape of a character the rules react to (`%3D` is `=`, `%22` is `"`...): the
    /// rules run again over the decoded text.
    Encoded = 10,
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
    ("sk-", Rule::Vendor),
    ("hf_", Rule::Vendor),
    ("whsec_", Rule::Vendor),
    ("shp", Rule::Vendor),
    ("dop_v1_", Rule::Vendor),
    ("ya29.", Rule::Vendor),
    ("gocspx-", Rule::Vendor),
    ("hooks.slack.com", Rule::Vendor),
    ("/api/webhooks/", Rule::Vendor),
    ("?code=", Rule::QueryCode),
    ("&code=", Rule::QueryCode),
    ("#code=", Rule::QueryCode),
    ("&amp;code=", Rule::QueryCode),
    ("s%3a", Rule::SessionCookie),
    // `= : " ' @ [ ] %` escaped (`%25` so that double encoding is decoded twice).
    ("%3d", Rule::Encoded),
    ("%3a", Rule::Encoded),
    ("%22", Rule::Encoded),
    ("%27", Rule::Encoded),
    ("%40", Rule::Encoded),
    ("%5b", Rule::Encoded),
    ("%5d", Rule::Encoded),
    ("%25", Rule::Encoded),
];

/// Which rules can match a text, found in one case-insensitive pass: the shape rules' literal
/// triggers and the words of secret keys (the caller's, so configured keys count).
#[derive(Debug, Clone)]
pub(crate) struct Triggers {
    /// `None` only if the automaton could not be built (size limits); then every rule runs,
    /// slower but never weaker.
    automaton: Option<AhoCorasick>,
    /// The rules each pattern stands for, including those of patterns it starts with (a
    /// leftmost-longest search reports only the longest of patterns starting at one place).
    rules_of: Vec<Found>,
}

/// The rules found in a text, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found(u32);

impl Found {
    const NONE: Found = Found(0);
    const ALL: Found = Found((1 << (Rule::Encoded as u8 + 1)) - 1);

    fn of(rule: Rule) -> Self {
        Found(1 << rule as u8)
    }

    fn has(self, rule: Rule) -> bool {
        self.0 & Found::of(rule).0 != 0
    }

    pub(crate) fn mentions_a_key(self) -> bool {
        self.has(Rule::KeyValue)
    }

    /// Whether any rule can match at all: the cheap check before [`find`].
    pub(crate) fn any(self) -> bool {
        self != Found::NONE
    }
}

impl Triggers {
    pub(crate) fn new(key_words: &[String]) -> Self {
        let mut patterns: Vec<(String, Found)> = Vec::new();
        let all = TRIGGERS.iter().map(|(t, r)| (t.to_string(), *r)).chain(
            key_words
                .iter()
                .map(|w| (w.to_ascii_lowercase(), Rule::KeyValue)),
        );
        for (pattern, rule) in all {
            match patterns.iter_mut().find(|(p, _)| *p == pattern) {
                Some((_, found)) => found.0 |= Found::of(rule).0,
                None => patterns.push((pattern, Found::of(rule))),
            }
        }
        let rules_of = patterns
            .iter()
            .map(|(p, _)| {
                Found(
                    patterns
                        .iter()
                        .filter(|(q, _)| p.starts_with(q.as_str()))
                        .fold(0, |acc, (_, f)| acc | f.0),
                )
            })
            .collect();
        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            // A full DFA: the fastest search per byte, and small for these few patterns.
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(patterns.iter().map(|(p, _)| p))
            .ok();
        Self {
            automaton,
            rules_of,
        }
    }

    /// Every rule whose trigger occurs in `text`. Searches again one byte after each match,
    /// so overlapping triggers are all seen, with the automaton's fast prefilter.
    pub(crate) fn scan(&self, text: &[u8]) -> Found {
        let mut found = self.scan_until(text, Found::ALL).0;
        // Most links carry no user information: without an `@` the URL rule has nothing to do.
        if found & Found::of(Rule::Url).0 != 0 && !text.contains(&b'@') {
            found &= !Found::of(Rule::Url).0;
        }
        if has_run_of_40(text) {
            found |= Found::of(Rule::LongRun).0;
        }
        Found(found)
    }

    /// Whether `text` holds a word of a secret key; stops at the first.
    pub(crate) fn mentions_a_key(&self, text: &[u8]) -> bool {
        self.scan_until(text, Found::of(Rule::KeyValue))
            .mentions_a_key()
    }

    /// Where words of secret keys start in `text`, in order.
    fn key_mentions<'t>(&'t self, text: &'t [u8]) -> impl Iterator<Item = usize> + 't {
        let automaton = self.automaton.as_ref();
        let mut at = 0;
        std::iter::from_fn(move || {
            let automaton = automaton?;
            while at < text.len() {
                let m = automaton.find(aho_corasick::Input::new(text).range(at..))?;
                at = m.start() + 1;
                if self.rules_of[m.pattern().as_usize()].mentions_a_key() {
                    return Some(m.start());
                }
            }
            None
        })
    }

    fn scan_until(&self, text: &[u8], enough: Found) -> Found {
        let Some(automaton) = &self.automaton else {
            return Found::ALL;
        };
        let mut found = 0;
        let mut at = 0;
        while at < text.len() {
            let Some(m) = automaton.find(aho_corasick::Input::new(text).range(at..)) else {
                break;
            };
            found |= self.rules_of[m.pattern().as_usize()].0;
            if found & enough.0 == enough.0 {
                break;
            }
            at = m.start() + 1;
        }
        Found(found)
    }
}

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
        r"|SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}",
        r"|sk-ant-[A-Za-z0-9_\-]{20,}",
        r"|sk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{32,}",
        r"|hf_[A-Za-z0-9]{30,}",
        r"|whsec_[A-Za-z0-9+/=]{20,}",
        r"|shp(?:at|ss|ca|pa)_[A-Fa-f0-9]{32}",
        r"|dop_v1_[a-f0-9]{64}",
        r"|ya29\.[0-9A-Za-z_\-]{20,}",
        r"|GOCSPX-[A-Za-z0-9_\-]{20,}",
        r"|hooks\.slack\.com/services/[A-Za-z0-9_\-]+/[A-Za-z0-9_\-]+/[A-Za-z0-9_\-]+",
        r"|(?:discord(?:app)?\.com)/api/webhooks/[0-9]+/[A-Za-z0-9_\-]+)",
    ))
});
static PEM: LazyLock<Regex> = LazyLock::new(|| {
    pattern(concat!(
        r"(?s-u)-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
        r"(.*?)",
        r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\z)",
    ))
});
/// An OAuth authorization code (RFC 6749 4.1.2) or a one-time code in a link: `code` as a
/// parameter of a query string or fragment. Only there: `error code=500` in prose is no query.
static QUERY_CODE: LazyLock<Regex> = LazyLock::new(|| pattern(r"(?i-u)(?:[?&#]|&amp;)code="));
/// An Express (`express-session`, `cookie-parser`) signed cookie as sent: `s:<id>.<HMAC>`, the
/// colon percent-encoded, the HMAC base64 (43 characters, `+` and `/` possibly encoded too).
static SESSION_COOKIE: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"(?-u)\bs%3[Aa][A-Za-z0-9_\-]{20,}\.[A-Za-z0-9%+/_\-]{20,}"));
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

/// What kind of credential `text` holds, when a rule that finds only unambiguous credential
/// shapes finds one: a JWT, a PEM private key, an AWS access key id, a vendor token, a
/// `Bearer`/`Basic` credential, a URL with a password, a signed session cookie. The key/value rule
/// and the 40-character rule are left out: an id such as `auth:saml` or a random 40-character
/// session id is not a credential by its shape alone. `found` is [`Triggers::scan`] of `text`.
pub(crate) fn credential_kind(text: &[u8], found: Found) -> Option<&'static str> {
    if found.has(Rule::Jwt) && JWT.is_match(text) {
        return Some("JWT");
    }
    if found.has(Rule::Pem)
        && PEM.captures_iter(text).any(|c| {
            c.get(1)
                .is_some_and(|body| !body.as_bytes().iter().all(u8::is_ascii_whitespace))
        })
    {
        return Some("PEM private key");
    }
    if found.has(Rule::AwsKeyId) && AWS_KEY_ID.is_match(text) {
        return Some("AWS access key id");
    }
    if found.has(Rule::Vendor) && VENDOR.is_match(text) {
        return Some("API token");
    }
    if found.has(Rule::Scheme) {
        for c in SCHEME.captures_iter(text) {
            let scheme = c.get(1).map_or(&b""[..], |m| m.as_bytes());
            if c.get(2)
                .is_some_and(|credential| scheme_credential(scheme, credential.as_bytes()))
            {
                return Some(if scheme.eq_ignore_ascii_case(b"basic") {
                    "Basic credential"
                } else {
                    "Bearer token"
                });
            }
        }
    }
    if found.has(Rule::Url) {
        let mut ranges = Vec::new();
        url_passwords(text, &mut ranges);
        if !ranges.is_empty() {
            return Some("URL with a password");
        }
    }
    if found.has(Rule::SessionCookie) && SESSION_COOKIE.is_match(text) {
        return Some("signed session cookie");
    }
    None
}

/// How many times percent-encoding is undone (`%253D` -> `%3D` -> `=`): a link carried in a
/// link carried in a link.
const MAX_DECODINGS: usize = 3;

/// Finds the byte ranges of secrets in `text`, running only the rules `found` (from
/// [`Triggers::scan`]) allows; `is_secret_key` decides which keys of key/value pairs are secret.
///
/// Percent-encoded text (`redirect_uri=https%3A%2F%2Fa%2Fb%3Ftoken%3Dabc`, a form body
/// `user%5Bpassword%5D=x`, JSON in a query parameter) is decoded, up to [`MAX_DECODINGS`] times,
/// and every rule runs over each decoded text as well; what they find there is mapped back to the
/// encoded bytes it came from, so the secret is replaced as written.
pub(crate) fn find(
    text: &[u8],
    triggers: &Triggers,
    found: Found,
    is_secret_key: &dyn Fn(&str) -> bool,
) -> Vec<Range<usize>> {
    let mut ranges = find_plain(text, triggers, found, is_secret_key);
    if !found.has(Rule::Encoded) {
        return ranges;
    }
    // The decoded text and where each of its bytes starts in `text` (one more entry: the end).
    let mut decoded = percent_decoded(text);
    for _ in 0..MAX_DECODINGS {
        let (view, starts) = &decoded;
        let found = triggers.scan(view);
        ranges.extend(
            find_plain(view, triggers, found, is_secret_key)
                .into_iter()
                .map(|r| starts[r.start]..starts[r.end]),
        );
        if !found.has(Rule::Encoded) {
            break;
        }
        let (next, next_starts) = percent_decoded(view);
        let starts = next_starts.iter().map(|&s| starts[s]).collect();
        decoded = (next, starts);
    }
    ranges
}

/// `text` with every `%XX` escape decoded, and where each decoded byte starts in `text` (plus
/// `text.len()` at the end, so a range `a..b` of the decoded text is `starts[a]..starts[b]`).
fn percent_decoded(text: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len());
    let mut starts = Vec::with_capacity(text.len() + 1);
    let mut i = 0;
    while i < text.len() {
        starts.push(i);
        let escaped = (text[i] == b'%')
            .then(|| Some(hex(*text.get(i + 1)?)? << 4 | hex(*text.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    starts.push(text.len());
    (out, starts)
}

/// [`find`] over `text` as it is.
fn find_plain(
    text: &[u8],
    triggers: &Triggers,
    found: Found,
    is_secret_key: &dyn Fn(&str) -> bool,
) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    if found.has(Rule::Scheme) {
        for c in SCHEME.captures_iter(text) {
            if let Some(credential) = c.get(2) {
                let scheme = c.get(1).map_or(&b""[..], |m| m.as_bytes());
                if scheme_credential(scheme, credential.as_bytes()) {
                    ranges.push(credential.range());
                }
            }
        }
    }
    if found.has(Rule::Jwt) {
        ranges.extend(JWT.find_iter(text).map(|m| m.range()));
    }
    if found.has(Rule::AwsKeyId) {
        ranges.extend(AWS_KEY_ID.find_iter(text).map(|m| m.range()));
    }
    if found.has(Rule::Vendor) {
        ranges.extend(VENDOR.find_iter(text).map(|m| m.range()));
    }
    if found.has(Rule::Pem) {
        ranges.extend(
            PEM.captures_iter(text)
                .filter_map(|c| c.get(1))
                .filter(|body| !body.as_bytes().iter().all(u8::is_ascii_whitespace))
                .map(|m| m.range()),
        );
    }
    if found.has(Rule::Url) {
        url_passwords(text, &mut ranges);
    }
    if found.has(Rule::LongRun) {
        aws_secret_runs(text, &mut ranges);
    }
    if found.has(Rule::SessionCookie) {
        ranges.extend(SESSION_COOKIE.find_iter(text).map(|m| m.range()));
    }
    if found.has(Rule::QueryCode) {
        // A code's value may run over the next `?code=` (`?` ends no value); that one is inside
        // it and is not read again, so hostile repetition costs one pass.
        let mut done = 0;
        for m in QUERY_CODE.find_iter(text) {
            if m.start() < done {
                continue;
            }
            if let Some(value) = value_at(text, m.end(), "code") {
                done = value.end;
                ranges.push(value);
            }
        }
    }
    if found.mentions_a_key() && text.iter().any(|&b| matches!(b, b'=' | b':' | b'<' | b'-')) {
        key_values(text, triggers, is_secret_key, &mut ranges);
    }
    ranges
}

fn has_run_of_40(text: &[u8]) -> bool {
    if text.len() < 40 {
        return false;
    }
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

/// `scheme://user:password@host`: the password, found without a regex because nearly every
/// message with a link triggers this rule. The authority ends at `/ ? #`, whitespace or a quote;
/// its last `@` ends the user information, whose first `:` starts the password.
fn url_passwords(text: &[u8], ranges: &mut Vec<Range<usize>>) {
    let ends_authority = |b: u8| {
        matches!(b, b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'\\')
            || b.is_ascii_whitespace()
    };
    let mut from = 0;
    while let Some(i) = find_bytes(&text[from..], b"://") {
        let start = from + i + 3;
        let len = text[start..]
            .iter()
            .position(|&b| ends_authority(b))
            .unwrap_or(text.len() - start);
        let authority = &text[start..start + len];
        if let Some(at) = authority.iter().rposition(|&b| b == b'@') {
            let user_info = &authority[..at];
            if let Some(colon) = user_info.iter().position(|&b| b == b':') {
                if colon + 1 < at {
                    ranges.push(start + colon + 1..start + at);
                }
            }
        }
        from = start;
    }
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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

/// Key/value pairs, found from where the words of secret keys occur: the key is the run of
/// `[A-Za-z0-9_.-]` around the word, followed by an optional (escaped) quote, ANSI colour codes
/// and spaces, then `=`, `:` or `=>` (Ruby and PHP hashes). Only a key followed by a separator is
/// judged by the key rule.
///
/// A key may be one segment of a bracket path (`user[password]=`, `credentials[user]=`,
/// `tokens[]=`, as forms and Rails write nested keys): the separator then follows the path's last
/// `]`, and the value is secret when the segment is (a secret segment holds everything below it,
/// as a secret key in JSON does).
///
/// `=>` also starts JavaScript arrow functions (`token => token.trim()`), so after `=>` a value
/// is taken only when the key is quoted or a symbol (`"password" =>`, `:password =>`) or the
/// value is quoted or bracketed.
fn key_values(
    text: &[u8],
    triggers: &Triggers,
    is_secret_key: &dyn Fn(&str) -> bool,
    ranges: &mut Vec<Range<usize>>,
) {
    let in_key = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    let mut done = 0;
    // Where the last bracket path walked ended: every segment inside it ends there too, so a
    // path of many segments is walked once, not once per segment.
    let mut walked = 0;
    for mention in triggers.key_mentions(text) {
        if mention < done {
            continue;
        }
        let mut start = mention;
        while start > 0 && in_key(text[start - 1]) {
            start -= 1;
        }
        let mut end = mention;
        while end < text.len() && in_key(text[end]) {
            end += 1;
        }
        done = end;
        // A colour code just before the key (`ESC[3mpassword`) is not part of it.
        if start >= 2 && text[start - 1] == b'[' && text[start - 2] == 0x1b {
            if let Some(m) = text[start..end].iter().position(|&b| b == b'm') {
                start += m + 1;
            }
        }
        let key = std::str::from_utf8(&text[start..end]).unwrap_or_default();
        let path_end = if end < walked {
            walked
        } else {
            let mut at = end;
            if start > 0 && text[start - 1] == b'[' && text.get(end) == Some(&b']') {
                at += 1;
            }
            while text.get(at) == Some(&b'[') {
                let len = text[at + 1..].iter().take_while(|&&b| in_key(b)).count();
                if text.get(at + 1 + len) != Some(&b']') {
                    break;
                }
                at += len + 2;
            }
            walked = at;
            at
        };
        let value = if let Some((value_start, rocket)) = separator_after(text, path_end) {
            // key=value, key: value, "key" => value
            let quoted_key = start > 0 && matches!(text[start - 1], b'"' | b'\'' | b':');
            let quoted_value = matches!(text.get(value_start), Some(b'"' | b'\'' | b'[' | b'{'));
            (is_secret_key(key) && (!rocket || quoted_key || quoted_value))
                .then(|| value_at(text, value_start, key))
                .flatten()
        } else if start > 0 && text[start - 1] == b'<' && text.get(end) == Some(&b'>') {
            // <password>value</password>
            let inner = end + 1;
            let len = text[inner..].iter().position(|&b| b == b'<').unwrap_or(0);
            (len > 0 && is_secret_key(key) && &text[inner..inner + len] != REDACTED.as_bytes())
                .then_some(inner..inner + len)
        } else if key.starts_with("--") && text.get(end) == Some(&b' ') {
            // --password value (a command line)
            let value_start = end + text[end..].iter().take_while(|&&b| b == b' ').count();
            let starts_a_flag = text.get(value_start).is_none_or(|&b| b == b'-');
            (!starts_a_flag && is_secret_key(key))
                .then(|| value_at(text, value_start, key))
                .flatten()
        } else {
            None
        };
        if let Some(value) = value {
            // A value with a separator of its own after it is a key as well (`cvv. :password =>
            // 'x'`: a word, then a Ruby symbol): replaced, and read on as a key, so its value
            // is found too.
            let also_a_key = separator_after(text, value.end).is_some();
            done = done.max(if also_a_key { value.start } else { value.end });
            ranges.push(value);
        }
    }
}

/// Where the value starts when `at` (the end of a key) is followed by a separator, and whether
/// that separator is `=>`.
fn separator_after(text: &[u8], mut at: usize) -> Option<(usize, bool)> {
    // A closing quote, escaped any number of times (JSON in a string in JSON...).
    let slashes = text[at..].iter().take_while(|&&b| b == b'\\').count();
    if matches!(text.get(at + slashes), Some(b'"' | b'\'')) {
        at += slashes + 1;
    }
    let skip = |mut at: usize| loop {
        match text.get(at) {
            Some(b' ' | b'\t') => at += 1,
            Some(0x1b) if text.get(at + 1) == Some(&b'[') => {
                let len = text[at + 2..]
                    .iter()
                    .position(|&b| !(b.is_ascii_digit() || b == b';'))?;
                if text.get(at + 2 + len) != Some(&b'm') {
                    return Some(at);
                }
                at += 3 + len;
            }
            _ => return Some(at),
        }
    };
    at = skip(at)?;
    if !matches!(text.get(at), Some(b'=' | b':')) {
        return None;
    }
    // `://` is a link, not a value.
    if text[at..].starts_with(b"://") {
        return None;
    }
    let rocket = text[at..].starts_with(b"=>");
    Some((skip(at + if rocket { 2 } else { 1 })?, rocket))
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
        // A value that starts with the marker is redacted already, as an unquoted one is: when
        // rules meet across an encoded quote (a query code's value runs over the `%22` that
        // closed a percent-encoded password), the marker's quotes no longer pair up, and read
        // as a value again it would be replaced again: redaction would never settle.
        if body.starts_with(REDACTED.as_bytes()) {
            return None;
        }
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
    let slashes = rest.iter().take_while(|&&b| b == b'\\').count();
    let range = if matches!(rest.first(), Some(b'[' | b'{')) {
        // An array or object (`"password": ["x"]` in JSON-ish text that does not parse): all of
        // it, as the JSON rule replaces a secret key's value whatever its type.
        let len = group_len(rest);
        if only_redacted(&rest[..len]) {
            return None;
        }
        start..start + len
    } else if slashes > 0 && rest.get(slashes) == Some(&b'"') {
        let quote = &rest[..=slashes];
        quoted(quote, quote)?
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

/// The length of the array or object `rest` starts with, through its closing bracket: brackets
/// nest, and those inside quoted strings do not count (an escaped quote, as in JSON carried in a
/// string, opens none). One that is never closed (a truncated text) runs to the line end.
fn group_len(rest: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut quote = None;
    let mut i = 0;
    while i < rest.len() {
        let b = rest[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'\\' => i += 1,
                b'"' | b'\'' => quote = Some(b),
                b'[' | b'{' => depth += 1,
                b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())
}

/// Whether an array or object holds nothing but markers (`["[NOT OUTPUT]"]`): already redacted.
fn only_redacted(group: &[u8]) -> bool {
    let mut i = 0;
    while i < group.len() {
        if group[i..].starts_with(REDACTED.as_bytes()) {
            i += REDACTED.len();
        } else if matches!(
            group[i],
            b'[' | b']' | b'{' | b'}' | b'"' | b'\'' | b',' | b'\\'
        ) || group[i].is_ascii_whitespace()
        {
            i += 1;
        } else {
            return false;
        }
    }
    true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_build_and_find_only_what_occurs() {
        let triggers = Triggers::new(&["password".to_string(), "pass".to_string()]);
        assert!(triggers.automaton.is_some());
        assert_eq!(triggers.scan(b"query-run happened in 12 ms"), Found::NONE);
        let found = triggers.scan(b"see https://u:p@x.example.com/a with PASSWORD");
        assert!(found.has(Rule::Url) && found.mentions_a_key() && !found.has(Rule::Jwt));
        // Overlapping triggers are all seen: "bearer" is a key word and a scheme trigger.
        let found = Triggers::new(&["bearer".to_string()]).scan(b"Bearer x");
        assert!(found.has(Rule::Scheme) && found.mentions_a_key());
    }
}
