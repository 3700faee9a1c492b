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
