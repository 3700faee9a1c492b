//! What linking one event costs the enricher per core, by part: the v1 event digest, the salt,
//! the v2 canonical content (serde value, personal values committed, keys sorted) and one
//! commitment. The enricher bench's `decode_join_rules_chain_encode` is the sum in place.
//!
//! ```sh
//! cargo bench -p audit-schemas --bench content
//! ```

use audit_schemas::chain::{self, content};
use audit_schemas::*;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

/// An enriched event as the chain sees one: a resolved user, a group, a client.
fn example() -> EnrichedAuditEvent {
    let raw: RawAuditEvent = serde_json::from_value(serde_json::json!({
        "event_id": "6f1c2d3e-0000-4000-8000-000000000001",
        "timestamp": 1_700_000_000_000_000i64,
        "event_type": "dataset.create",
        "source": "SERVER",
        "service": "catalog",
        "session_id": "s1",
        "user_id": "u-7",
        "username": "ada",
        "tenant": null,
        "success": true,
        "message": "created",
        "entities": [],
        "params": {"q": "\"abc\"", "r": "abc"},
        "response": null,
        "error": null,
        "client": {"ip": "10.0.0.9", "user_agent": null},
        "ingest": null,
        "utc_offset_minutes": null
    }))
    .unwrap();
    EnrichedAuditEvent {
        event: raw,
        user: Some(ResolvedUser {
            id: "u-7".into(),
            login: "ada".into(),
            name: Some("Ada L".into()),
        }),
        groups: vec![GroupRef {
            id: "g1".into(),
            name: "admins".into(),
        }],
        session: None,
        enrichment: Enrichment::Enriched,
        claimed_user_mismatch: false,
        pipeline: PipelineMeta {
            received_at: Timestamp::from_micros(1),
            enriched_at: Timestamp::from_micros(2),
            raw_partition: 3,
            raw_offset: 9,
        },
        event_time: EventTimeCheck::Plausible,
        chain: None,
        catalog: None,
    }
}

fn parts(c: &mut Criterion) {
    let e = example();
    let salt = content::new_salt();
    let mut g = c.benchmark_group("link_parts");
    g.bench_function("v1_event_digest", |b| {
        b.iter(|| chain::event_digest(black_box(&e.event), 1, 2))
    });
    g.bench_function("new_salt", |b| b.iter(content::new_salt));
    g.bench_function("v2_content", |b| {
        b.iter(|| content::content(black_box(&e), &salt))
    });
    g.bench_function("v2_to_value_only", |b| {
        b.iter(|| serde_json::to_value(black_box(&e)))
    });
    g.bench_function("one_commitment", |b| {
        b.iter(|| content::commitment(&salt, black_box("someone@example.com")))
    });
    g.finish();
}

criterion_group!(benches, parts);
criterion_main!(benches);
