//! What the benchmarks share: the directory they join against and the events they post.

use crate::pipeline::Pipeline;
use serde_json::{json, Value};

/// One group, `sessions` users each with a session `s-<n>`, so every benchmark event joins.
pub async fn bootstrap(pipeline: &Pipeline, sessions: usize) -> anyhow::Result<()> {
    use audit_schemas::*;
    let mut entries = vec![DirectoryEntry::Group(Group {
        id: "g-all".into(),
        name: "everyone".into(),
        parent_ids: vec![],
        scim: None,
    })];
    for n in 0..sessions {
        entries.push(DirectoryEntry::User(User {
            id: format!("u-{n}"),
            login: format!("user{n}"),
            name: None,
            group_ids: vec!["g-all".into()],
            scim: None,
        }));
        entries.push(DirectoryEntry::Session(Session {
            id: format!("s-{n}"),
            user_id: format!("u-{n}"),
            started_at: Timestamp::now(),
            ip: None,
            user_agent: None,
            last_activity_at: None,
            ended_at: None,
        }));
    }
    pipeline.put_directory(entries).await
}

/// Event `n` of a benchmark, timed now, in one of `sessions` sessions; `message` lets a phase
/// find its own events downstream.
pub fn event(n: usize, sessions: usize, message: String) -> Value {
    let types = [
        "query-created",
        "query-start",
        "log",
        "job-start",
        "connection-edited",
    ];
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "timestamp": audit_schemas::Timestamp::now().to_rfc3339(),
        "event_type": types[n % types.len()],
        "source": "SERVER",
        "session_id": format!("s-{}", n % sessions),
        "message": message,
        "entities": [{"type": "query", "id": format!("q-{}", n % 1000)}],
        "params": {"n": n, "rows": 1234}
    })
}

/// The `q`-quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A near-limit ingest body that passes the API's shape caps: about 94,000 small JSON values in
/// 900 KiB of CLIENT events, the most parse work per byte the API lets through.
pub fn heavy_body() -> String {
    let params: serde_json::Map<String, Value> = (0..250)
        .map(|i| (format!("p{i}"), json!(vec!["abcdefg"; 10])))
        .collect();
    let one =
        json!({"event_type": "query-created", "source": "CLIENT", "params": params}).to_string();
    let n = (900 * 1024) / (one.len() + 1);
    format!("[{}]", vec![one; n.max(1)].join(","))
}

/// A browser token for `user` (session `sess-<user>`, no tenant), signed HS256 with `secret`
/// under key id `kid`, as a platform server mints it.
pub fn browser_token(
    kid: &str,
    secret: &str,
    user: &str,
    lifetime: std::time::Duration,
) -> anyhow::Result<String> {
    use audit_client::browser_token::{mint, BrowserUser, SigningKey, DEFAULT_AUDIENCE};
    Ok(mint(
        &SigningKey::Hs256 {
            kid: kid.into(),
            secret: secret.as_bytes().to_vec(),
        },
        &BrowserUser {
            user_id: user.into(),
            session_id: format!("sess-{user}"),
            tenant: None,
            login: None,
        },
        DEFAULT_AUDIENCE,
        lifetime,
    )?)
}
