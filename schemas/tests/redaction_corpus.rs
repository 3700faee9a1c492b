//! The redaction corpus (`testdata/redaction/`): every secret shape must vanish from the text it
//! is in, every look-alike must come out unchanged; generated cases on top.

use audit_schemas::redaction::{Redactor, REDACTED};
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Secret {
    text: String,
    secret: String,
    shape: String,
}

#[derive(Deserialize)]
struct LookAlike {
    text: String,
    shape: String,
}

fn corpus<T: for<'de> Deserialize<'de>>(name: &str) -> Vec<T> {
    let path = format!("{}/testdata/redaction/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}:{}: {e}", i + 1)))
        .collect()
}

#[test]
fn every_secret_shape_is_replaced() {
    let redactor = Redactor::default();
    let secrets: Vec<Secret> = corpus("secrets.jsonl");
    assert!(secrets.len() >= 100, "only {} secret cases", secrets.len());
    let mut failures = Vec::new();
    for case in &secrets {
        assert!(
            case.text.contains(&case.secret) && !case.secret.is_empty(),
            "corpus error: {:?} is not in its text",
            case.secret
        );
        let mut text = case.text.clone();
        let changed = redactor.redact_text(&mut text);
        if text.contains(&case.secret) || changed == 0 || !text.contains(REDACTED) {
            failures.push(format!(
                "[{}] {:?}\n   -> {:?}",
                case.shape, case.text, text
            ));
        }
        // Idempotent: a second pass finds nothing more.
        let mut again = text.clone();
        assert_eq!(
            redactor.redact_text(&mut again),
            0,
            "second pass changed {text:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} secrets kept:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_look_alike_is_kept() {
    let redactor = Redactor::default();
    let looks: Vec<LookAlike> = corpus("look-alikes.jsonl");
    assert!(looks.len() >= 100, "only {} look-alikes", looks.len());
    let mut failures = Vec::new();
    for case in &looks {
        let mut text = case.text.clone();
        let changed = redactor.redact_text(&mut text);
        if text != case.text || changed != 0 {
            failures.push(format!(
                "[{}] {:?}\n   -> {:?}",
                case.shape, case.text, text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} look-alikes changed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The corpus inside longer text, as an unconvertible log line carries it.
#[test]
fn secrets_inside_longer_text_are_replaced() {
    let redactor = Redactor::default();
    for case in corpus::<Secret>("secrets.jsonl") {
        let mut text = format!("not json: {} (line 7)", case.text.replace('\n', " "));
        redactor.redact_text(&mut text);
        assert!(
            !text.contains(&case.secret),
            "[{}] kept in {text}",
            case.shape
        );
    }
}

/// Overlapping rules that meet across an encoded quote (a query code's value runs over the
/// `%22` closing a percent-encoded password) leave a marker whose quote is gone: a second pass
/// must take it as redacted, not as an unclosed value to replace again.
#[test]
fn a_marker_left_without_its_closing_quote_is_not_redacted_again() {
    let redactor = Redactor::default();
    for input in [
        "passwords%3A%22?code=0%22-----BEGIN PRIVATE KEY-----",
        "password=\"[NOT OUTPUT] tail",
        "password='[NOT OUTPUT]",
        "password%3D\"?code=%22%22Bearer %22",
        "passwords%3A%22?code=%22%22=>",
    ] {
        let mut once = input.to_string();
        redactor.redact_text(&mut once);
        let mut twice = once.clone();
        assert_eq!(redactor.redact_text(&mut twice), 0, "{input:?} -> {once:?}");
        assert_eq!(twice, once);
    }
    // A value after the marker is still a value.
    let mut text = "password=\"[NOT OUTPUT]\" token=hunter2-Secret end".to_string();
    assert_eq!(redactor.redact_text(&mut text), 1);
    assert!(!text.contains("hunter2"), "{text}");
}

/// The corpus as string values inside JSON: the same rules apply at any depth.
#[test]
fn secrets_inside_json_string_values_are_replaced() {
    let redactor = Redactor::default();
    for case in corpus::<Secret>("secrets.jsonl") {
        let mut value = serde_json::json!({"outer": [{"note": case.text}]});
        redactor.redact_value(&mut value);
        let printed = value.to_string();
        let escaped = serde_json::Value::String(case.secret.clone()).to_string();
        assert!(
            !printed.contains(escaped.trim_matches('"')),
            "[{}] kept in {printed}",
            case.shape
        );
    }
}

/// JSON carried in a string of JSON, ten levels deep: no stack exhaustion, and the password at
/// the bottom is still found (structurally near the top, by the escaped key/value rule below).
#[test]
fn deeply_embedded_json_is_redacted() {
    let redactor = Redactor::default();
    let mut doc = serde_json::json!({"user": "bob", "password": "deep-s3cret-value"}).to_string();
    for level in 0..10 {
        doc = serde_json::json!({"level": level, "inner": doc}).to_string();
    }
    let mut text = doc.clone();
    assert!(redactor.redact_text(&mut text) > 0);
    assert!(!text.contains("deep-s3cret-value"), "{text}");
    assert!(text.contains("bob"));
    let mut deep = "x".repeat(10);
    for _ in 0..2_000 {
        deep = format!("{{\"a\": [{deep:?}]}}");
        if deep.len() > 200_000 {
            break;
        }
    }
    redactor.redact_text(&mut deep);
}

/// Hostile text of a megabyte built from what the rules react to (unclosed brackets, bracket
/// paths, `=>`, nested percent-encoding, repeated `?code=`, unclosed quotes...), with a secret
/// after it: the redactor gets through it (linear rules: no backtracking regex, every scan moves
/// on past what it read) and still finds the secret. Only the result is asserted, never the time.
#[test]
fn a_megabyte_of_hostile_text_is_redacted_correctly() {
    const MIB: usize = 1 << 20;
    let redactor = Redactor::default();
    let tail = "Zq9TailSecret7x";
    let patterns: &[&str] = &[
        "\"password\": [",
        "\"password\"=>[",
        "a[token]",
        "[token",
        "user[password][",
        "=>",
        "%25",
        "%253D",
        "?code=",
        "&code=?",
        "password: \"",
        "{\"auth\": {",
        "s%3A",
        "[[[[{{{{",
        "\\\"",
        "password=>password=>",
        "%3Ftoken%3D",
        "cookie=",
        "://a:b@",
        "sessionid",
    ];
    for pattern in patterns {
        let mut text = pattern.repeat(MIB / pattern.len());
        text.push_str(&format!(" password={tail}"));
        let mut once = text.clone();
        redactor.redact_text(&mut once);
        assert!(
            !once.contains(tail),
            "{pattern:?}: the secret after it was kept"
        );
        let mut twice = once.clone();
        assert_eq!(
            redactor.redact_text(&mut twice),
            0,
            "{pattern:?}: second pass"
        );
        // The same as bytes (a dead letter) and inside JSON.
        let (bytes, _) = redactor.redact_bytes(text.as_bytes());
        assert!(
            !String::from_utf8_lossy(&bytes).contains(tail),
            "{pattern:?} as bytes"
        );
        let mut value = serde_json::json!({"note": [text]});
        redactor.redact_value(&mut value);
        assert!(!value.to_string().contains(tail), "{pattern:?} in JSON");
    }
}

fn token(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                .chars()
                .collect::<Vec<_>>(),
        ),
        len,
    )
    .prop_map(|c| c.into_iter().collect::<String>())
    .prop_filter("has a digit", |t| t.chars().any(|c| c.is_ascii_digit()))
}

fn prose() -> impl Strategy<Value = String> {
    "[a-z ,.]{0,30}"
}

proptest! {
    #[test]
    fn generated_key_value_secrets_vanish(
        before in prose(),
        after in prose(),
        key in prop::sample::select(vec![
            "password", "db_password", "apiKey", "client_secret", "access_token",
            "X-Api-Key", "refreshToken", "passwd", "private_key", "auth_token",
        ]),
        sep in prop::sample::select(vec!["=", ": ", " = ", ":"]),
        quote in prop::sample::select(vec!["", "\"", "'"]),
        value in token(8..40),
    ) {
        let redactor = Redactor::default();
        let mut text = format!("{before} {key}{sep}{quote}{value}{quote} {after}");
        redactor.redact_text(&mut text);
        prop_assert!(!text.contains(&value), "{}", text);
    }

    /// The shapes of issue #25 item 5: Ruby and PHP hashes, bracket paths of forms, arrays under
    /// secret keys, percent-encoded pairs (once or twice) and OAuth codes in query strings.
    #[test]
    fn generated_nested_encoded_and_hash_secrets_vanish(
        before in prose(),
        key in prop::sample::select(vec![
            "password", "api_key", "client_secret", "access_token", "refresh_token", "secret",
        ]),
        outer in prop::sample::select(vec!["user", "credentials", "account", "data"]),
        value in token(8..40),
        form in 0..9usize,
    ) {
        let redactor = Redactor::default();
        let pair = match form {
            0 => format!("\"{key}\"=>\"{value}\""),
            1 => format!(":{key} => '{value}'"),
            2 => format!("'{key}' => \"{value}\""),
            3 => format!("{outer}[{key}]={value}&commit=1"),
            4 => format!("{outer}%5B{key}%5D%3D{value}%26x%3D1"),
            5 => format!("\"{key}\": [\"{value}\", \"x\"], \"n\": "),
            6 => format!("redirect_uri=https%3A%2F%2Fa%2Fb%3F{key}%3D{value}%26s%3D1"),
            7 => format!("r=https%253A%252F%252Fa%252Fb%253F{key}%253D{value}%2526s%253D1"),
            _ => format!("GET /cb?state=s1&code={value}&x=1"),
        };
        let mut text = format!("{before} {pair} {before}");
        redactor.redact_text(&mut text);
        prop_assert!(!text.contains(&value), "{}", text);
        let mut again = text.clone();
        prop_assert_eq!(redactor.redact_text(&mut again), 0, "{}", text);
    }

    /// `code` outside a query string, arrow functions, bracket paths and encoded pairs of keys
    /// that describe a secret: never changed.
    #[test]
    fn generated_code_and_path_look_alikes_stay(
        value in "[A-Za-z0-9]{1,30}",
        before in prose(),
        form in 0..6usize,
    ) {
        let redactor = Redactor::default();
        let original = match form {
            0 => format!("{before} error code={value}"),
            1 => format!("{before} status_code: {value}"),
            2 => format!("{before} items.map(token => token.{value})"),
            3 => format!("{before} user[password_policy]={value}&user[name]={value}"),
            4 => format!("{before} next=%2Fa%3Ftoken_type%3D{value}%26page%3D2"),
            _ => format!("{before} GET /geo?zip_code={value}&country_code=DE"),
        };
        let mut text = original.clone();
        prop_assert_eq!(redactor.redact_text(&mut text), 0, "{}", text);
        prop_assert_eq!(text, original);
    }

    #[test]
    fn generated_url_passwords_vanish(
        scheme in prop::sample::select(vec!["postgres", "mysql", "https", "redis", "amqp"]),
        user in "[a-z]{1,8}",
        password in token(6..30),
        host in "[a-z]{1,10}(\\.[a-z]{2,5})?",
    ) {
        let redactor = Redactor::default();
        let mut text = format!("connect {scheme}://{user}:{password}@{host}/db failed");
        redactor.redact_text(&mut text);
        prop_assert!(!text.contains(&password), "{}", text);
        let kept = format!("{scheme}://{user}:");
        prop_assert!(text.contains(&kept), "{}", text);
    }

    #[test]
    fn generated_bearer_tokens_and_aws_ids_vanish(
        t in token(16..64),
        id in "(AKIA|ASIA)[A-Z0-9]{16}",
        before in prose(),
    ) {
        let redactor = Redactor::default();
        let mut text = format!("{before} Authorization: Bearer {t} key {id} end");
        redactor.redact_text(&mut text);
        prop_assert!(!text.contains(&t) && !text.contains(&id), "{}", text);
    }

    /// Hostile text built from the characters the rules react to: never a panic, and a second
    /// pass finds nothing more.
    #[test]
    fn any_text_is_redacted_without_panic_and_idempotently(
        text in "([a-zA-Z0-9 =:;&<>/@'\"\\{}\\[\\],.\\-_+%\n\x1b]|password|token|Bearer |AKIA|eyJ|://|-----BEGIN PRIVATE KEY-----|é|=>|\\?code=|%3D|%253D|%5B|%22|s%3A){0,60}",
    ) {
        let redactor = Redactor::default();
        let mut once = text.clone();
        redactor.redact_text(&mut once);
        let mut twice = once.clone();
        prop_assert_eq!(redactor.redact_text(&mut twice), 0, "{:?} -> {:?}", text, once);
        prop_assert_eq!(twice, once);
    }

    #[test]
    fn any_bytes_are_redacted_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let redactor = Redactor::default();
        let _ = redactor.redact_bytes(&bytes);
    }

    /// Keys that describe a secret, with any value, and plain prose: never changed.
    #[test]
    fn generated_look_alikes_stay(
        key in prop::sample::select(vec![
            "token_count", "password_policy", "tokenType", "secret_name", "auth_method",
            "password_length", "cookie_enabled", "session_id", "sort_key", "author",
        ]),
        value in "[A-Za-z0-9]{1,30}",
        before in prose(),
    ) {
        let redactor = Redactor::default();
        let original = format!("{before} {key}={value}");
        let mut text = original.clone();
        prop_assert_eq!(redactor.redact_text(&mut text), 0);
        prop_assert_eq!(text, original);
    }
}
