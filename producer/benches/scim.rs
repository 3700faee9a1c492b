//! SCIM at directory scale, in process (no broker: the store is pure, and the HTTP path would
//! add only the broker's acknowledgement of a write's records):
//!
//! ```sh
//! cargo bench -p audit-producer --bench scim
//! ```
//!
//! Builds a store of 100,000 users and 10,000 SCIM groups (each user in 3 groups, about 30
//! members a group, plus one group of 9,990 members) through its real API, then measures what
//! an identity provider's polling and provisioning cost on one instance: a filtered one-page
//! list of Users (`userName eq`) and of Groups (`displayName eq`, `members.value eq`), the
//! first unfiltered page of 100 of each, and a membership PATCH (add, then remove, one member)
//! on a 30-member group and on the 9,990-member group, each through the same code the routes
//! run (`list_page`; render, `patch`, `input`, `records_for_write`, then applying the records
//! to the store), minus the publish. Criterion prints means; then a plain loop of 1,000 runs of
//! each prints p50, p99 and max. `SCIM_USERS`, `SCIM_GROUPS` and `SCIM_RUNS` change the sizes.

use audit_producer::scim::resource::{self, Kind};
use audit_producer::scim::store::Store;
use audit_producer::scim::{list_page, records_for_write, render, ListQuery};
use audit_schemas::redaction::Redactor;
use audit_schemas::{DirectoryEntry, DirectoryRecord, Group, User};
use criterion::Criterion;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;
use std::time::{Duration, Instant};

const BASE: &str = "http://bench/scim/v2";
const MEMBERSHIPS: usize = 3;
/// Members of the one big group (a group holds at most 10,000: PATCH validates its result
/// against `resource::MAX_MEMBERS`).
const BIG: usize = 9_990;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The directory as an identity provider leaves it: users, and SCIM groups listing them.
fn build(users: usize, groups: usize) -> Store {
    let mut store = Store::default();
    let mut members: Vec<Vec<String>> = vec![Vec::new(); groups];
    for u in 0..users {
        let id = format!("u-{u:06}");
        let mut group_ids: Vec<String> = (0..MEMBERSHIPS)
            .map(|k| (u * 7 + k * 1_009) % groups)
            .map(|g| {
                members[g].push(id.clone());
                format!("g-{g:05}")
            })
            .collect();
        if u < BIG {
            group_ids.push(format!("g-{groups:05}"));
        }
        let scim = json!({
            "userName": format!("user-{u}@example.com"),
            "displayName": format!("User {u}"),
            "externalId": format!("ext-{u}"),
            "active": true,
            "emails": [{"value": format!("user-{u}@example.com"), "type": "work", "primary": true}],
            "name": {"givenName": "User", "familyName": format!("{u}")},
            "meta": {"created": "2026-01-01T00:00:00Z", "lastModified": "2026-01-01T00:00:00Z"}
        });
        store.put(DirectoryRecord {
            entry: DirectoryEntry::User(User {
                id,
                login: format!("user-{u}@example.com"),
                name: Some(format!("User {u}")),
                group_ids,
                scim: Some(scim.to_string()),
            }),
        });
    }
    // One more group holding the first BIG users.
    let big: Vec<String> = (0..users.min(BIG)).map(|u| format!("u-{u:06}")).collect();
    for (g, listed) in members.into_iter().enumerate().chain([(groups, big)]) {
        let listed: Vec<Value> = listed.iter().map(|m| json!({"value": m})).collect();
        let scim = json!({
            "displayName": format!("group-{g}"),
            "externalId": format!("gext-{g}"),
            "members": listed,
            "meta": {"created": "2026-01-01T00:00:00Z", "lastModified": "2026-01-01T00:00:00Z"}
        });
        store.put(DirectoryRecord {
            entry: DirectoryEntry::Group(Group {
                id: format!("g-{g:05}"),
                name: format!("group-{g}"),
                parent_ids: vec![],
                scim: Some(scim.to_string()),
            }),
        });
    }
    store
}

fn query(params: &[(&str, String)]) -> ListQuery {
    let params: HashMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    match ListQuery::parse(&params) {
        Ok(q) => q,
        Err(e) => panic!("bad bench query {params:?}: {e}"),
    }
}

/// A membership PATCH as the route runs it, without the publish: render the group, apply the
/// operations, validate, derive the records, apply them to the store.
fn patch_member(store: &RwLock<Store>, redactor: &Redactor, group: &str, member: &str, add: bool) {
    let op = if add {
        json!({"op": "add", "path": "members", "value": [{"value": member}]})
    } else {
        json!({"op": "remove", "path": format!("members[value eq \"{member}\"]")})
    };
    let body = json!({"schemas": [resource::PATCH_SCHEMA], "Operations": [op]});
    let records = {
        let store = store.read().unwrap_or_else(|p| p.into_inner());
        let Some(mut current) = render(&store, Kind::Group, group, BASE) else {
            panic!("{group} is not in the store")
        };
        if let Some(o) = current.as_object_mut() {
            for owned in ["id", "meta", "schemas"] {
                o.remove(owned);
            }
        }
        let patched = resource::patch(&mut current, &body)
            .and_then(|()| resource::input(Kind::Group, current))
            .and_then(|input| records_for_write(&store, redactor, Kind::Group, group, input));
        match patched {
            Ok(records) => records,
            Err(e) => panic!("the PATCH failed: {e}"),
        }
    };
    let changed = records.len();
    let mut store = store.write().unwrap_or_else(|p| p.into_inner());
    for r in records {
        store.put(r);
    }
    // The group and the one member user.
    assert_eq!(
        changed, 2,
        "a one-member PATCH republishes the group and that member"
    );
}

fn percentiles(name: &str, runs: usize, mut f: impl FnMut(usize)) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed()
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{name:<48} p50 {:>9.3} ms   p99 {:>9.3} ms   max {:>9.3} ms   ({runs} runs)",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
}

fn main() {
    let users = env("SCIM_USERS", 100_000);
    let groups = env("SCIM_GROUPS", 10_000);
    let runs = env("SCIM_RUNS", 1_000);
    let started = Instant::now();
    let store = RwLock::new(build(users, groups));
    println!(
        "store: {users} users, {} groups, built in {:.2} s",
        groups + 1,
        started.elapsed().as_secs_f64()
    );
    let redactor = Redactor::default();
    let big = format!("g-{groups:05}");
    let small = "g-00042".to_string();
    let outsider = format!("u-{:06}", users - 1);

    let user_eq = |i: usize| {
        query(&[(
            "filter",
            format!("userName eq \"user-{}@example.com\"", (i * 7_919) % users),
        )])
    };
    let group_eq = |i: usize| {
        query(&[(
            "filter",
            format!("displayName eq \"group-{}\"", (i * 31) % groups),
        )])
    };
    let group_member = |i: usize| {
        query(&[(
            "filter",
            format!("members.value eq \"u-{:06}\"", (i * 13) % users),
        )])
    };
    let first_page = query(&[("count", "100".into())]);
    // Entra's membership check and Okta's group lookup, as a sanity check of the results.
    let one = list_page(&store, &[Kind::User], &user_eq(1), BASE);
    assert_eq!(one["totalResults"], 1, "{one}");
    let one = list_page(&store, &[Kind::Group], &group_eq(1), BASE);
    assert_eq!(one["totalResults"], 1, "{one}");

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(50)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let mut i = 0usize;
    c.bench_function("scim list Users filter=userName eq", |b| {
        b.iter(|| {
            i += 1;
            black_box(list_page(&store, &[Kind::User], &user_eq(i), BASE))
        })
    });
    c.bench_function("scim list Groups filter=displayName eq", |b| {
        b.iter(|| {
            i += 1;
            black_box(list_page(&store, &[Kind::Group], &group_eq(i), BASE))
        })
    });
    c.bench_function("scim list Groups filter=members.value eq", |b| {
        b.iter(|| {
            i += 1;
            black_box(list_page(&store, &[Kind::Group], &group_member(i), BASE))
        })
    });
    c.bench_function("scim list Users first page of 100", |b| {
        b.iter(|| black_box(list_page(&store, &[Kind::User], &first_page, BASE)))
    });
    c.bench_function("scim list Groups first page of 100", |b| {
        b.iter(|| black_box(list_page(&store, &[Kind::Group], &first_page, BASE)))
    });
    let mut n = 0usize;
    c.bench_function("scim PATCH add+remove member, 30-member group", |b| {
        b.iter(|| {
            n += 1;
            patch_member(&store, &redactor, &small, &outsider, n % 2 == 1);
        })
    });
    if n % 2 == 1 {
        patch_member(&store, &redactor, &small, &outsider, false);
    }
    n = 0;
    c.bench_function("scim PATCH add+remove member, 9,990-member group", |b| {
        b.iter(|| {
            n += 1;
            patch_member(&store, &redactor, &big, &outsider, n % 2 == 1);
        })
    });
    if n % 2 == 1 {
        patch_member(&store, &redactor, &big, &outsider, false);
    }
    c.final_summary();

    println!();
    percentiles("list Users filter=userName eq (1 page)", runs, |i| {
        black_box(list_page(&store, &[Kind::User], &user_eq(i), BASE));
    });
    percentiles("list Groups filter=displayName eq (1 page)", runs, |i| {
        black_box(list_page(&store, &[Kind::Group], &group_eq(i), BASE));
    });
    percentiles("list Groups filter=members.value eq (1 page)", runs, |i| {
        black_box(list_page(&store, &[Kind::Group], &group_member(i), BASE));
    });
    percentiles("list Users first page of 100", runs, |_| {
        black_box(list_page(&store, &[Kind::User], &first_page, BASE));
    });
    percentiles("list Groups first page of 100", runs, |_| {
        black_box(list_page(&store, &[Kind::Group], &first_page, BASE));
    });
    percentiles("PATCH add/remove member, 30-member group", runs, |i| {
        patch_member(&store, &redactor, &small, &outsider, i % 2 == 0);
    });
    percentiles("PATCH add/remove member, 9,990-member group", runs, |i| {
        patch_member(&store, &redactor, &big, &outsider, i % 2 == 0);
    });
    // One unindexed filter for scale: every user is rendered and tested.
    percentiles("list Users filter=userName sw (full scan)", 5, |_| {
        black_box(list_page(
            &store,
            &[Kind::User],
            &query(&[("filter", "userName sw \"user-9999\"".into())]),
            BASE,
        ));
    });
}
