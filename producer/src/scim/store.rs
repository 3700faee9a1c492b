//! The users and groups SCIM serves, kept from the compacted directory topic (every instance
//! reads it whole, so any instance answers), with the indexes that keep SCIM's reads and
//! membership changes proportional to what they touch, plus the membership arithmetic of writes.
//! Pure: the follower and the write-path catch-up that feed it live in `scim`.
//!
//! **Where membership lives.** A group written over SCIM (its `scim` JSON is set) is the one
//! source of truth for its own membership: its `members` say who is in it. A member user's
//! `group_ids` (a member group's `parent_ids`) is a copy derived from those lists, written
//! whenever a write touches either side (the enricher joins on it). So a user write never
//! decides memberships of SCIM groups: it takes them from the groups ([`Store::derived_group_ids`]),
//! and a group write republishes every member record that disagrees with its list
//! ([`Store::membership_changes`]). Groups written outside SCIM (`/v1/directory`, `auditctl`)
//! keep the member side as their truth: their members are whoever names them.
//!
//! Indexes, each maintained on every put and delete in time proportional to the entry:
//! SCIM groups' member lists both ways, who names each group in `group_ids`/`parent_ids`,
//! and `userName`, `displayName`, `externalId` for the `eq` filters identity providers poll
//! with. The store also remembers the last offset it applied per partition, so the directory
//! follower and a write's catch-up read can both feed it without applying a record twice.

use super::filter::{Filter, Op};
use super::resource::{self, Kind};
use audit_schemas::{
    AvroRecord, DirectoryEntry, DirectoryKey, DirectoryRecord, DirectoryTopic, Group, User,
};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

/// Ids under one key of an index (ordered, so candidates come out in list order).
type Index = HashMap<String, BTreeSet<String>>;

#[derive(Debug, Default)]
pub struct Store {
    users: BTreeMap<String, User>,
    groups: BTreeMap<String, Group>,
    /// SCIM group id -> the ids its `members` list.
    listed: Index,
    /// Member id -> the SCIM groups whose `members` list it.
    listed_in: Index,
    /// Group id -> the users and groups naming it in `group_ids` / `parent_ids`.
    claimed: Index,
    /// Lowercased `userName` -> user ids (unique over SCIM, not over `/v1/directory`).
    user_names: Index,
    /// Lowercased `displayName` -> ids, per kind.
    user_display: Index,
    group_display: Index,
    /// `externalId` (case-exact) -> ids, per kind.
    user_external: Index,
    group_external: Index,
    /// Partition -> last offset applied from the directory topic.
    positions: HashMap<i32, i64>,
}

/// What an entry contributes to the attribute indexes.
#[derive(Default)]
struct Keys {
    user_name: Option<String>,
    display: Vec<String>,
    external: Vec<String>,
    /// Ids a SCIM group lists (empty for other entries).
    listed: BTreeSet<String>,
}

fn add(index: &mut Index, key: &str, id: &str) {
    index
        .entry(key.to_string())
        .or_default()
        .insert(id.to_string());
}

fn remove(index: &mut Index, key: &str, id: &str) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

/// The strings of a single- or multi-valued attribute (filters flatten arrays).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec![],
    }
}

fn attributes(scim: Option<&str>) -> Map<String, Value> {
    scim.and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
        .unwrap_or_default()
}

fn user_keys(u: &User) -> Keys {
    let attributes = attributes(u.scim.as_deref());
    // As `render_user` shows it: the stored displayName, or the directory's name without SCIM.
    let display = match &u.scim {
        Some(_) => strings(attributes.get("displayName")),
        None => u.name.iter().cloned().collect(),
    };
    Keys {
        user_name: Some(u.login.to_lowercase()),
        display: display.iter().map(|d| d.to_lowercase()).collect(),
        external: strings(attributes.get("externalId")),
        listed: BTreeSet::new(),
    }
}

fn group_keys(g: &Group) -> Keys {
    let attributes = attributes(g.scim.as_deref());
    let listed = match attributes.get("members") {
        Some(Value::Array(members)) => members
            .iter()
            .filter_map(|m| m.get("value").and_then(Value::as_str))
            .map(str::to_string)
            .collect(),
        _ => BTreeSet::new(),
    };
    Keys {
        user_name: None,
        display: vec![g.name.to_lowercase()],
        external: strings(attributes.get("externalId")),
        listed,
    }
}

impl Store {
    /// One record of the directory topic at `partition`/`offset` (an empty value deletes);
    /// a record at or before the last offset applied from that partition is skipped, so the
    /// follower and a write's catch-up read may both deliver it. Whether it was applied.
    pub fn apply_record(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        partition: i32,
        offset: i64,
    ) -> Result<bool, String> {
        if self.positions.get(&partition).is_some_and(|&p| offset <= p) {
            return Ok(false);
        }
        // Counted as applied even when undecodable: it is skipped once, not retried forever.
        self.positions.insert(partition, offset);
        self.apply_bytes(key, value).map(|()| true)
    }

    /// The last offset applied from `partition`.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.positions.get(&partition).copied()
    }

    /// One record of the directory topic (an empty value deletes).
    pub fn apply_bytes(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key =
            DirectoryKey::from_record_key(DirectoryTopic::Directory, &String::from_utf8_lossy(key))
                .map_err(|e| e.to_string())?;
        match value {
            None | Some([]) => {
                self.delete(&key);
                Ok(())
            }
            Some(bytes) => {
                let record = DirectoryRecord::decode(bytes).map_err(|e| e.to_string())?;
                if record.key() != key {
                    return Err(format!("record under {key} is {}", record.key()));
                }
                self.put(record);
                Ok(())
            }
        }
    }

    pub fn put(&mut self, record: DirectoryRecord) {
        match record.entry {
            DirectoryEntry::User(u) => {
                if let Some(old) = self.users.remove(&u.id) {
                    self.unindex_user(&old);
                }
                self.index_user(&u);
                self.users.insert(u.id.clone(), u);
            }
            DirectoryEntry::Group(g) => {
                let old = self.groups.remove(&g.id);
                self.reindex_group(old.as_ref(), Some(&g));
                self.groups.insert(g.id.clone(), g);
            }
            DirectoryEntry::Session(_) => {}
        }
    }

    pub fn delete(&mut self, key: &DirectoryKey) {
        match key {
            DirectoryKey::User(id) => {
                if let Some(old) = self.users.remove(id) {
                    self.unindex_user(&old);
                }
            }
            DirectoryKey::Group(id) => {
                if let Some(old) = self.groups.remove(id) {
                    self.reindex_group(Some(&old), None);
                }
            }
            DirectoryKey::Session(_) => {}
        }
    }

    fn index_user(&mut self, u: &User) {
        let keys = user_keys(u);
        if let Some(n) = &keys.user_name {
            add(&mut self.user_names, n, &u.id);
        }
        for d in &keys.display {
            add(&mut self.user_display, d, &u.id);
        }
        for e in &keys.external {
            add(&mut self.user_external, e, &u.id);
        }
        for g in &u.group_ids {
            add(&mut self.claimed, g, &u.id);
        }
    }

    fn unindex_user(&mut self, u: &User) {
        let keys = user_keys(u);
        if let Some(n) = &keys.user_name {
            remove(&mut self.user_names, n, &u.id);
        }
        for d in &keys.display {
            remove(&mut self.user_display, d, &u.id);
        }
        for e in &keys.external {
            remove(&mut self.user_external, e, &u.id);
        }
        for g in &u.group_ids {
            remove(&mut self.claimed, g, &u.id);
        }
    }

    /// Moves a group's index entries from `old` to `new`; its member lists by difference, so
    /// a membership change costs the members that moved (plus reading the list once).
    fn reindex_group(&mut self, old: Option<&Group>, new: Option<&Group>) {
        let old_keys = old.map(group_keys).unwrap_or_default();
        let new_keys = new.map(group_keys).unwrap_or_default();
        let id = match new.or(old) {
            Some(g) => g.id.clone(),
            None => return,
        };
        for d in &old_keys.display {
            remove(&mut self.group_display, d, &id);
        }
        for e in &old_keys.external {
            remove(&mut self.group_external, e, &id);
        }
        for d in &new_keys.display {
            add(&mut self.group_display, d, &id);
        }
        for e in &new_keys.external {
            add(&mut self.group_external, e, &id);
        }
        if let Some(old) = old {
            for p in &old.parent_ids {
                remove(&mut self.claimed, p, &id);
            }
        }
        if let Some(new) = new {
            for p in &new.parent_ids {
                add(&mut self.claimed, p, &id);
            }
        }
        for gone in old_keys.listed.difference(&new_keys.listed) {
            remove(&mut self.listed_in, gone, &id);
        }
        for came in new_keys.listed.difference(&old_keys.listed) {
            add(&mut self.listed_in, came, &id);
        }
        if new.is_some_and(|g| g.scim.is_some()) {
            self.listed.insert(id, new_keys.listed);
        } else {
            self.listed.remove(&id);
        }
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.get(id)
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    pub fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::User => self.users.len(),
            Kind::Group => self.groups.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    /// Up to `limit` ids of `kind` in list order, from the one after `after` (from the first
    /// when `None`), skipping `skip` of them first.
    pub fn ids(&self, kind: Kind, after: Option<&str>, skip: usize, limit: usize) -> Vec<String> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        match kind {
            Kind::User => self
                .users
                .range::<str, _>((from, Bound::Unbounded))
                .skip(skip)
                .take(limit)
                .map(|(k, _)| k.clone())
                .collect(),
            Kind::Group => self
                .groups
                .range::<str, _>((from, Bound::Unbounded))
                .skip(skip)
                .take(limit)
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    /// Another user holding `user_name` (compared as SCIM's `userName`: case-insensitively).
    pub fn user_named(&self, user_name: &str, except: Option<&str>) -> Option<&User> {
        self.user_names
            .get(&user_name.to_lowercase())?
            .iter()
            .filter(|id| Some(id.as_str()) != except)
            .find_map(|id| self.users.get(id))
    }

    /// Whether group `id` is written over SCIM, so that its `members` decide its membership.
    pub fn managed(&self, id: &str) -> bool {
        self.listed.contains_key(id)
    }

    /// The groups an entry is directly in: the SCIM groups listing it, and the other groups
    /// its own record names.
    fn memberships<'a>(&'a self, id: &str, named: &'a [String]) -> Vec<&'a str> {
        let mut out: Vec<&str> = named
            .iter()
            .map(String::as_str)
            .filter(|g| !self.managed(g))
            .collect();
        if let Some(listing) = self.listed_in.get(id) {
            out.extend(listing.iter().map(String::as_str));
        }
        out
    }

    /// The groups a user is directly in: (id, display name).
    pub fn groups_of(&self, user: &User) -> Vec<(String, String)> {
        self.memberships(&user.id, &user.group_ids)
            .into_iter()
            .map(|g| {
                let name = self.groups.get(g).map_or(g, |g| g.name.as_str());
                (g.to_string(), name.to_string())
            })
            .collect()
    }

    /// What a user's `group_ids` (a group's `parent_ids`) must be, given what its record says
    /// now (`named`): the SCIM groups listing it, in the order it had them, and the groups
    /// managed elsewhere it names. The one derivation of memberships for member records.
    pub fn derived_group_ids(&self, id: &str, named: &[String]) -> Vec<String> {
        let listing = self.listed_in.get(id);
        let listed = |g: &str| listing.is_some_and(|l| l.contains(g));
        let mut out: Vec<String> = named
            .iter()
            .filter(|g| !self.managed(g) || listed(g))
            .cloned()
            .collect();
        let have: HashSet<String> = out.iter().cloned().collect();
        if let Some(listing) = listing {
            out.extend(listing.iter().filter(|g| !have.contains(*g)).cloned());
        }
        out
    }

    /// Who is in a group: its `members` when written over SCIM, else whoever names it.
    pub fn members_of(&self, group_id: &str) -> Vec<(String, Kind)> {
        let ids = match self.listed.get(group_id) {
            Some(listed) => listed,
            None => match self.claimed.get(group_id) {
                Some(claimed) => claimed,
                None => return vec![],
            },
        };
        ids.iter()
            .map(|id| {
                let kind = if self.groups.contains_key(id) && !self.users.contains_key(id) {
                    Kind::Group
                } else {
                    Kind::User
                };
                (id.clone(), kind)
            })
            .collect()
    }

    /// The user and group records that must change for group `group_id` to have exactly
    /// `members`: each member user that lacks the group in its `group_ids` gains it, each user
    /// naming it that is no longer a member loses it (a member group: its `parent_ids`). Ids
    /// the directory does not know are left alone. Costs the members listed plus those naming
    /// the group, and yields only the records that disagree.
    pub fn membership_changes(&self, group_id: &str, members: &[String]) -> Vec<DirectoryRecord> {
        let wanted: HashSet<&str> = members.iter().map(String::as_str).collect();
        let mut seen: HashSet<&str> = HashSet::new();
        let naming = self.claimed.get(group_id).into_iter().flatten();
        let mut out = Vec::new();
        for id in members.iter().chain(naming) {
            if !seen.insert(id.as_str()) {
                continue;
            }
            let join = wanted.contains(id.as_str());
            if let Some(u) = self.users.get(id) {
                if u.group_ids.iter().any(|g| g == group_id) != join {
                    let mut u = u.clone();
                    edit(&mut u.group_ids, group_id, join);
                    out.push(DirectoryRecord {
                        entry: DirectoryEntry::User(u),
                    });
                }
            } else if let Some(g) = self.groups.get(id).filter(|g| g.id != group_id) {
                if g.parent_ids.iter().any(|p| p == group_id) != join {
                    let mut g = g.clone();
                    edit(&mut g.parent_ids, group_id, join);
                    out.push(DirectoryRecord {
                        entry: DirectoryEntry::Group(g),
                    });
                }
            }
        }
        out
    }

    /// The SCIM groups listing `member`, each without it: what deleting the member publishes.
    pub fn groups_without(&self, member: &str) -> Vec<Group> {
        self.listed_in
            .get(member)
            .into_iter()
            .flatten()
            .filter_map(|g| self.groups.get(g))
            .filter_map(|g| resource::without_member(g, member))
            .collect()
    }

    /// The entries naming group `id` (users, then groups), each without it: what deleting the
    /// group publishes.
    pub fn named_without(&self, id: &str) -> Vec<DirectoryRecord> {
        let mut out = Vec::new();
        for m in self.claimed.get(id).into_iter().flatten() {
            if let Some(u) = self.users.get(m) {
                let mut u = u.clone();
                edit(&mut u.group_ids, id, false);
                out.push(DirectoryRecord {
                    entry: DirectoryEntry::User(u),
                });
            } else if let Some(g) = self.groups.get(m).filter(|g| g.id != id) {
                let mut g = g.clone();
                edit(&mut g.parent_ids, id, false);
                out.push(DirectoryRecord {
                    entry: DirectoryEntry::Group(g),
                });
            }
        }
        out
    }

    /// The ids of `kind` that can match `filter`, in list order, when an index answers it
    /// (`None`: every entry must be looked at). A superset: the caller still applies the
    /// filter to each rendered candidate.
    pub fn candidates(&self, kind: Kind, filter: &Filter) -> Option<Vec<String>> {
        self.candidate_set(kind, filter)
            .map(|ids| ids.into_iter().collect())
    }

    fn candidate_set(&self, kind: Kind, filter: &Filter) -> Option<BTreeSet<String>> {
        match filter {
            Filter::And(a, b) => match (self.candidate_set(kind, a), self.candidate_set(kind, b)) {
                (Some(x), Some(y)) => Some(x.intersection(&y).cloned().collect()),
                (Some(x), None) | (None, Some(x)) => Some(x),
                (None, None) => None,
            },
            Filter::Or(a, b) => {
                let mut x = self.candidate_set(kind, a)?;
                x.extend(self.candidate_set(kind, b)?);
                Some(x)
            }
            Filter::Compare(path, Op::Eq, Value::String(want)) => self.lookup(kind, path, want),
            _ => None,
        }
    }

    fn lookup(&self, kind: Kind, path: &[String], want: &str) -> Option<BTreeSet<String>> {
        let is = |i: usize, name: &str| path.get(i).is_some_and(|p| p.eq_ignore_ascii_case(name));
        let from = |index: &Index, key: &str| index.get(key).cloned().unwrap_or_default();
        let single = path.len() == 1;
        let exists = |id: &str| match kind {
            Kind::User => self.users.contains_key(id),
            Kind::Group => self.groups.contains_key(id),
        };
        if single && is(0, "id") {
            return Some(
                Some(want.to_string())
                    .filter(|id| exists(id))
                    .into_iter()
                    .collect(),
            );
        }
        match kind {
            Kind::User if single && is(0, "userName") => {
                Some(from(&self.user_names, &want.to_lowercase()))
            }
            Kind::User if single && is(0, "displayName") => {
                Some(from(&self.user_display, &want.to_lowercase()))
            }
            Kind::User if single && is(0, "externalId") => Some(from(&self.user_external, want)),
            // `groups.value eq "g"`: g's members.
            Kind::User if is(0, "groups") && path.len() == 2 && is(1, "value") => Some(
                self.members_of(want)
                    .into_iter()
                    .map(|(id, _)| id)
                    .filter(|id| self.users.contains_key(id))
                    .collect(),
            ),
            Kind::Group if single && is(0, "displayName") => {
                Some(from(&self.group_display, &want.to_lowercase()))
            }
            Kind::Group if single && is(0, "externalId") => Some(from(&self.group_external, want)),
            // `members.value eq "u"`: the groups u is in.
            Kind::Group if is(0, "members") && path.len() == 2 && is(1, "value") => {
                let named = match (self.users.get(want), self.groups.get(want)) {
                    (Some(u), _) => u.group_ids.as_slice(),
                    (None, Some(g)) => g.parent_ids.as_slice(),
                    (None, None) => &[],
                };
                Some(
                    self.memberships(want, named)
                        .into_iter()
                        .filter(|g| self.groups.contains_key(*g))
                        .map(str::to_string)
                        .collect(),
                )
            }
            _ => None,
        }
    }
}

/// Adds or removes `id` in `ids`; whether anything changed.
fn edit(ids: &mut Vec<String>, id: &str, join: bool) -> bool {
    let present = ids.iter().any(|i| i == id);
    match (join, present) {
        (true, false) => {
            ids.push(id.to_string());
            true
        }
        (false, true) => {
            ids.retain(|i| i != id);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::filter;
    use serde_json::json;

    fn user(id: &str, groups: &[&str]) -> DirectoryRecord {
        DirectoryRecord {
            entry: DirectoryEntry::User(User {
                id: id.into(),
                login: format!("{id}@x"),
                name: None,
                group_ids: groups.iter().map(|g| g.to_string()).collect(),
                scim: None,
            }),
        }
    }

    fn group(id: &str, scim_members: Option<&[&str]>) -> DirectoryRecord {
        DirectoryRecord {
            entry: DirectoryEntry::Group(Group {
                id: id.into(),
                name: format!("{id} name"),
                parent_ids: vec![],
                scim: scim_members.map(|m| {
                    let members: Vec<Value> = m.iter().map(|v| json!({"value": v})).collect();
                    json!({"displayName": format!("{id} name"), "externalId": format!("ext-{id}"), "members": members}).to_string()
                }),
            }),
        }
    }

    fn ids(records: &[DirectoryRecord]) -> Vec<String> {
        records.iter().map(|r| r.key().to_string()).collect()
    }

    #[test]
    fn membership_changes_touch_only_what_disagrees() {
        let mut s = Store::default();
        s.put(user("u1", &["g"]));
        s.put(user("u2", &[]));
        s.put(user("u3", &["g"]));
        s.put(group("sub", None));
        // u3 is in g and stays: no record for it; ghost is unknown: none either.
        let new = vec![
            "u2".to_string(),
            "sub".to_string(),
            "u3".to_string(),
            "ghost".to_string(),
        ];
        let changes = s.membership_changes("g", &new);
        assert_eq!(ids(&changes), ["user:u2", "group:sub", "user:u1"]);
        for c in changes {
            s.put(c);
        }
        assert_eq!(s.user("u1").unwrap().group_ids, Vec::<String>::new());
        assert_eq!(s.user("u2").unwrap().group_ids, ["g"]);
        assert_eq!(s.group("sub").unwrap().parent_ids, ["g"]);
        assert_eq!(s.members_of("g").len(), 3);
        assert!(s.user_named("U2@X", None).is_some());
        assert!(s.user_named("u2@x", Some("u2")).is_none());
        assert!(
            s.membership_changes("g", &new).is_empty(),
            "nothing left to fix"
        );
    }

    #[test]
    fn a_scim_group_decides_its_membership_whatever_a_user_record_says() {
        let mut s = Store::default();
        // u1's record still names g (a stale copy), but g lists only u2.
        s.put(user("u1", &["g", "other"]));
        s.put(user("u2", &[]));
        s.put(group("g", Some(&["u2"])));
        s.put(group("other", None));
        let u1 = s.user("u1").unwrap().clone();
        assert_eq!(s.groups_of(&u1), [("other".into(), "other name".into())]);
        assert_eq!(s.derived_group_ids("u1", &u1.group_ids), ["other"]);
        assert_eq!(s.derived_group_ids("u2", &[]), ["g"]);
        let members: Vec<String> = s.members_of("g").into_iter().map(|(m, _)| m).collect();
        assert_eq!(members, ["u2"]);
        // The group write fixes both sides: u1 loses g, u2 gains it.
        assert_eq!(
            ids(&s.membership_changes("g", &["u2".to_string()])),
            ["user:u2", "user:u1"]
        );
        // Deleting u2 takes it out of g's list; deleting g out of u1's record.
        let without = s.groups_without("u2");
        assert_eq!(without.len(), 1);
        assert!(!without[0].scim.as_deref().unwrap().contains("u2"));
        assert_eq!(ids(&s.named_without("g")), ["user:u1"]);
    }

    #[test]
    fn indexes_follow_puts_and_deletes() {
        let mut s = Store::default();
        s.put(group("g", Some(&["u1", "u2"])));
        s.put(user("u1", &["g"]));
        s.put(user("u2", &["g"]));
        let f = |t: &str| filter::parse(t).unwrap();
        assert_eq!(
            s.candidates(Kind::User, &f(r#"userName eq "U1@X""#)),
            Some(vec!["u1".to_string()])
        );
        assert_eq!(
            s.candidates(Kind::Group, &f(r#"members.value eq "u2""#)),
            Some(vec!["g".to_string()])
        );
        assert_eq!(
            s.candidates(Kind::Group, &f(r#"externalId eq "ext-g""#)),
            Some(vec!["g".to_string()])
        );
        assert_eq!(
            s.candidates(Kind::Group, &f(r#"displayName eq "G NAME" and id eq "g""#)),
            Some(vec!["g".to_string()])
        );
        assert_eq!(s.candidates(Kind::User, &f(r#"userName sw "u""#)), None);
        assert_eq!(
            s.candidates(Kind::User, &f(r#"groups.value eq "g""#)),
            Some(vec!["u1".to_string(), "u2".to_string()])
        );
        // g drops u2: both directions follow.
        s.put(group("g", Some(&["u1"])));
        assert_eq!(
            s.candidates(Kind::Group, &f(r#"members.value eq "u2""#)),
            Some(vec![])
        );
        s.delete(&DirectoryKey::User("u1".into()));
        assert_eq!(
            s.candidates(Kind::User, &f(r#"userName eq "u1@x""#)),
            Some(vec![])
        );
        s.delete(&DirectoryKey::Group("g".into()));
        assert!(!s.managed("g"));
        assert_eq!(
            s.candidates(Kind::Group, &f(r#"displayName eq "g name""#)),
            Some(vec![])
        );
        assert_eq!(s.ids(Kind::User, None, 0, 10), ["u2"]);
    }

    #[test]
    fn a_record_is_applied_once_per_offset() {
        let mut s = Store::default();
        let bytes = user("u1", &[]).encode().unwrap();
        assert_eq!(s.apply_record(b"user:u1", Some(&bytes), 0, 5), Ok(true));
        assert_eq!(s.apply_record(b"user:u1", None, 0, 5), Ok(false));
        assert!(s.user("u1").is_some(), "a replayed offset changes nothing");
        assert_eq!(s.apply_record(b"user:u1", None, 0, 6), Ok(true));
        assert!(s.user("u1").is_none());
        assert_eq!(s.position(0), Some(6));
        assert!(s.apply_record(b"nonsense", Some(b"x"), 1, 0).is_err());
        assert_eq!(
            s.position(1),
            Some(0),
            "a bad record is skipped, not retried"
        );
    }
}
