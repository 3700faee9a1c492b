//! SCIM Users and Groups (RFC 7643) as the directory stores them, and PATCH (RFC 7644 §3.5.2).
//! Pure: what a request body becomes, what a stored entry renders as.
//!
//! A user is the directory's `User` (id, `login` = `userName`, `name` = `displayName` or the
//! formatted name, `group_ids`) with the rest of its SCIM attributes kept as JSON beside it. A
//! group is the directory's `Group` (`name` = `displayName`) with its `members` kept in its
//! JSON: the identity provider's word is what it renders back, and each member user's
//! `group_ids` (each member group's `parent_ids`) is derived from it, which is what the
//! enricher joins on. `password` is never stored; server-owned attributes (`id`, `meta`, a
//! user's `groups`) are taken from the server, never from the body.

use super::filter::{self, get_ci, Filter};
use super::ScimError;
use audit_schemas::{Group, Timestamp, User};
use serde_json::{json, Map, Value};
use std::collections::HashSet;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Longest `userName`, `displayName` or member id kept.
const MAX_NAME_LEN: usize = 256;
/// Most members one group request may list.
pub const MAX_MEMBERS: usize = 10_000;
/// Most operations in one PATCH.
const MAX_OPERATIONS: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Group,
}

impl Kind {
    pub fn schema(self) -> &'static str {
        match self {
            Kind::User => USER_SCHEMA,
            Kind::Group => GROUP_SCHEMA,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Group => "Group",
        }
    }

    /// Attributes the server owns: dropped from bodies.
    fn server_owned(self) -> &'static [&'static str] {
        match self {
            Kind::User => &["id", "meta", "schemas", "groups", "password"],
            Kind::Group => &["id", "meta", "schemas"],
        }
    }
}

/// A validated body: the resource's attributes as stored (server-owned ones removed).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub attributes: Map<String, Value>,
}

impl Input {
    /// `userName` of a user, `displayName` of a group.
    pub fn name(&self, kind: Kind) -> &str {
        let key = match kind {
            Kind::User => "userName",
            Kind::Group => "displayName",
        };
        self.attributes
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// A group's member ids, in order, each once (linear: groups have thousands).
    pub fn member_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        if let Some(Value::Array(members)) = self.attributes.get("members") {
            for m in members {
                if let Some(id) = m.get("value").and_then(Value::as_str) {
                    if seen.insert(id) {
                        ids.push(id.to_string());
                    }
                }
            }
        }
        ids
    }

    /// The name the directory shows for a user: `displayName`, else the formatted name, else
    /// given and family names.
    pub fn display_name(&self) -> Option<String> {
        if let Some(d) = self.attributes.get("displayName").and_then(Value::as_str) {
            return Some(d.to_string());
        }
        let name = self.attributes.get("name")?.as_object()?;
        if let Some(f) = get_ci(name, "formatted").and_then(Value::as_str) {
            return Some(f.to_string());
        }
        let parts: Vec<&str> = ["givenName", "familyName"]
            .iter()
            .filter_map(|k| get_ci(name, k).and_then(Value::as_str))
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// Canonical spelling of the core attributes: SCIM attribute names are case-insensitive.
fn canonical(kind: Kind, key: &str) -> Option<&'static str> {
    const USER: &[&str] = &[
        "id",
        "externalId",
        "meta",
        "schemas",
        "userName",
        "name",
        "displayName",
        "nickName",
        "profileUrl",
        "title",
        "userType",
        "preferredLanguage",
        "locale",
        "timezone",
        "active",
        "password",
        "emails",
        "phoneNumbers",
        "ims",
        "photos",
        "addresses",
        "groups",
        "entitlements",
        "roles",
        "x509Certificates",
    ];
    const GROUP: &[&str] = &[
        "id",
        "externalId",
        "meta",
        "schemas",
        "displayName",
        "members",
    ];
    let names = match kind {
        Kind::User => USER,
        Kind::Group => GROUP,
    };
    names.iter().copied().find(|n| n.eq_ignore_ascii_case(key))
}

/// Validates a POST or PUT body (or a patched resource).
pub fn input(kind: Kind, body: Value) -> Result<Input, ScimError> {
    let Value::Object(obj) = body else {
        return Err(ScimError::bad_request(
            "invalidSyntax",
            "the body must be a JSON object",
        ));
    };
    if let Some(schemas) = get_ci(&obj, "schemas") {
        let listed = schemas
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(kind.schema())));
        if !listed {
            return Err(ScimError::bad_request(
                "invalidSyntax",
                format!("schemas must list {}", kind.schema()),
            ));
        }
    }
    let mut attributes = Map::new();
    for (key, value) in obj {
        let key = canonical(kind, &key).map_or(key, str::to_string);
        if kind.server_owned().contains(&key.as_str()) || value.is_null() {
            continue;
        }
        attributes.insert(key, value);
    }
    let name_key = match kind {
        Kind::User => "userName",
        Kind::Group => "displayName",
    };
    match attributes.get(name_key) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_NAME_LEN => {}
        Some(Value::String(s)) if !s.trim().is_empty() => {
            return Err(ScimError::bad_request(
                "invalidValue",
                format!("{name_key} is longer than {MAX_NAME_LEN} bytes"),
            ))
        }
        _ => {
            return Err(ScimError::bad_request(
                "invalidValue",
                format!("{name_key} is required and must be a non-empty string"),
            ))
        }
    }
    if let Some(active) = attributes.get("active") {
        if !active.is_boolean() {
            return Err(ScimError::bad_request(
                "invalidValue",
                "active must be true or false",
            ));
        }
    }
    for multi in ["emails", "phoneNumbers", "addresses", "members", "roles"] {
        if let Some(v) = attributes.get(multi) {
            if !v.is_array() {
                return Err(ScimError::bad_request(
                    "invalidValue",
                    format!("{multi} must be an array"),
                ));
            }
        }
    }
    if let Some(Value::Array(members)) = attributes.get("members") {
        if members.len() > MAX_MEMBERS {
            return Err(ScimError::bad_request(
                "invalidValue",
                format!("at most {MAX_MEMBERS} members per request"),
            ));
        }
        for (i, m) in members.iter().enumerate() {
            let ok = m
                .get("value")
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty() && v.len() <= MAX_NAME_LEN);
            if !ok {
                return Err(ScimError::bad_request(
                    "invalidValue",
                    format!("members[{i}].value must be the id of a user or group"),
                ));
            }
        }
    }
    Ok(Input { attributes })
}

/// The stored JSON of an entry: its attributes and its creation and change times.
pub fn stored(input: &Input, created: &str, modified: &str) -> String {
    let mut obj = input.attributes.clone();
    obj.insert(
        "meta".into(),
        json!({"created": created, "lastModified": modified}),
    );
    Value::Object(obj).to_string()
}

/// The attributes of an entry as last stored (an entry written outside SCIM has none beyond
/// what the directory holds).
fn attributes_of(scim: Option<&str>) -> Map<String, Value> {
    scim.and_then(|s| serde_json::from_str::<Value>(s).ok())
        .and_then(|v| match v {
            Value::Object(o) => Some(o),
            _ => None,
        })
        .unwrap_or_default()
}

/// When the entry was created, for keeping it across a replace.
pub fn created_of(scim: Option<&str>) -> Option<String> {
    attributes_of(scim)
        .get("meta")?
        .get("created")?
        .as_str()
        .map(str::to_string)
}

fn meta(
    kind: Kind,
    id: &str,
    base: &str,
    version: &str,
    attributes: &mut Map<String, Value>,
) -> Value {
    let stored = attributes.remove("meta");
    let now = Timestamp::now().to_rfc3339();
    let created = stored
        .as_ref()
        .and_then(|m| m.get("created"))
        .and_then(Value::as_str)
        .map_or(now.clone(), str::to_string);
    let modified = stored
        .as_ref()
        .and_then(|m| m.get("lastModified"))
        .and_then(Value::as_str)
        .map_or(created.clone(), str::to_string);
    json!({
        "resourceType": kind.name(),
        "created": created,
        "lastModified": modified,
        "location": format!("{base}/{}s/{id}", kind.name()),
        "version": version,
    })
}

/// A resource's version (`meta.version`, the `ETag`): a weak tag over everything the
/// resource renders from, so any change of the entry or of its memberships changes it, and
/// every instance holding the same directory computes the same tag.
fn version(parts: &[&str], ids: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for p in parts.iter().chain(ids) {
        hash.update((p.len() as u64).to_le_bytes());
        hash.update(p.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("W/\"{hex}\"")
}

/// Whether an `If-Match` header value (a list of tags or `*`) admits `current`; weak and
/// strong spellings of one tag compare equal.
pub fn if_match(header: &str, current: &str) -> bool {
    let opaque = |t: &str| {
        let t = t.trim();
        t.strip_prefix("W/").unwrap_or(t).to_string()
    };
    let current = opaque(current);
    header
        .split(',')
        .any(|t| t.trim() == "*" || opaque(t) == current)
}

/// The version a user renders with.
pub fn user_version(user: &User, groups: &[(String, String)]) -> String {
    let ids: Vec<&str> = groups.iter().map(|(g, _)| g.as_str()).collect();
    version(
        &[
            "user",
            &user.login,
            user.name.as_deref().unwrap_or("\u{0}"),
            user.scim.as_deref().unwrap_or("\u{0}"),
        ],
        &ids,
    )
}

/// The version a group renders with.
pub fn group_version(group: &Group, derived_members: &[(String, Kind)]) -> String {
    let ids: Vec<&str> = group
        .parent_ids
        .iter()
        .map(String::as_str)
        .chain(std::iter::once("\u{0}"))
        .chain(derived_members.iter().map(|(m, _)| m.as_str()))
        .collect();
    version(
        &[
            "group",
            &group.name,
            group.scim.as_deref().unwrap_or("\u{0}"),
        ],
        &ids,
    )
}

/// The group without `member` in its SCIM members, when it listed it.
pub fn without_member(group: &Group, member: &str) -> Option<Group> {
    let mut attributes: Map<String, Value> = serde_json::from_str(group.scim.as_deref()?).ok()?;
    let Some(Value::Array(members)) = attributes.get_mut("members") else {
        return None;
    };
    let before = members.len();
    members.retain(|m| m.get("value").and_then(Value::as_str) != Some(member));
    if members.len() == before {
        return None;
    }
    Some(Group {
        scim: Some(Value::Object(attributes).to_string()),
        ..group.clone()
    })
}

/// A user as SCIM renders it; `groups` are (id, displayName) of the groups it is in.
pub fn render_user(user: &User, groups: &[(String, String)], base: &str) -> Value {
    let mut attributes = attributes_of(user.scim.as_deref());
    let version = user_version(user, groups);
    let meta = meta(Kind::User, &user.id, base, &version, &mut attributes);
    attributes.insert("userName".into(), json!(user.login));
    if user.scim.is_none() {
        if let Some(name) = &user.name {
            attributes.insert("displayName".into(), json!(name));
        }
    }
    if !groups.is_empty() {
        let groups: Vec<Value> = groups
            .iter()
            .map(|(id, name)| json!({"value": id, "display": name, "$ref": format!("{base}/Groups/{id}"), "type": "direct"}))
            .collect();
        attributes.insert("groups".into(), Value::Array(groups));
    }
    attributes.insert("schemas".into(), json!([USER_SCHEMA]));
    attributes.insert("id".into(), json!(user.id));
    attributes.insert("meta".into(), meta);
    Value::Object(attributes)
}

/// A group as SCIM renders it; `members` are (id, kind) of the entries the directory says
/// belong to it, when it was not written over SCIM.
pub fn render_group(group: &Group, derived_members: &[(String, Kind)], base: &str) -> Value {
    let mut attributes = attributes_of(group.scim.as_deref());
    let version = group_version(group, derived_members);
    let meta = meta(Kind::Group, &group.id, base, &version, &mut attributes);
    attributes.insert("displayName".into(), json!(group.name));
    if group.scim.is_none() && !derived_members.is_empty() {
        let members: Vec<Value> = derived_members
            .iter()
            .map(|(id, kind)| json!({"value": id, "type": kind.name(), "$ref": format!("{base}/{}s/{id}", kind.name())}))
            .collect();
        attributes.insert("members".into(), Value::Array(members));
    }
    attributes.insert("schemas".into(), json!([GROUP_SCHEMA]));
    attributes.insert("id".into(), json!(group.id));
    attributes.insert("meta".into(), meta);
    Value::Object(attributes)
}

/// Applies a PATCH body to a rendered resource; the caller validates the result with
/// [`input`] as if it had been PUT.
pub fn patch(resource: &mut Value, body: &Value) -> Result<(), ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::bad_request("invalidSyntax", "the body must be a JSON object"))?;
    let listed = get_ci(obj, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(PATCH_SCHEMA)));
    if !listed {
        return Err(ScimError::bad_request(
            "invalidSyntax",
            format!("schemas must list {PATCH_SCHEMA}"),
        ));
    }
    let ops = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::bad_request("invalidSyntax", "Operations must be an array"))?;
    if ops.len() > MAX_OPERATIONS {
        return Err(ScimError::bad_request(
            "invalidValue",
            format!("at most {MAX_OPERATIONS} operations per request"),
        ));
    }
    for (i, op) in ops.iter().enumerate() {
        let op_obj = op.as_object().ok_or_else(|| {
            ScimError::bad_request("invalidSyntax", format!("Operations[{i}] is not an object"))
        })?;
        let name = get_ci(op_obj, "op")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let path = get_ci(op_obj, "path").and_then(Value::as_str);
        let value = get_ci(op_obj, "value").cloned();
        let target = resource
            .as_object_mut()
            .ok_or_else(|| ScimError::bad_request("invalidSyntax", "not an object"))?;
        match (name.as_str(), path) {
            ("add" | "replace", None) => {
                let Some(Value::Object(values)) = value else {
                    return Err(ScimError::bad_request(
                        "invalidValue",
                        format!("Operations[{i}]: without a path the value must be an object"),
                    ));
                };
                for (k, v) in values {
                    let path = Path::parse(&k)?;
                    set(target, &path, v, name == "add")?;
                }
            }
            ("add" | "replace", Some(path)) => {
                let value = value.ok_or_else(|| {
                    ScimError::bad_request("invalidValue", format!("Operations[{i}] needs a value"))
                })?;
                set(target, &Path::parse(path)?, value, name == "add")?;
            }
            ("remove", Some(path)) => remove(target, &Path::parse(path)?, value.as_ref())?,
            ("remove", None) => {
                return Err(ScimError::bad_request(
                    "noTarget",
                    format!("Operations[{i}]: remove needs a path"),
                ))
            }
            (other, _) => {
                return Err(ScimError::bad_request(
                    "invalidSyntax",
                    format!("Operations[{i}]: {other:?} is not add, replace or remove"),
                ))
            }
        }
    }
    Ok(())
}

/// A PATCH path: `attr`, `attr.sub`, `attr[filter]` or `attr[filter].sub`.
#[derive(Debug)]
struct Path {
    attribute: String,
    filter: Option<Filter>,
    sub: Option<String>,
}

impl Path {
    fn parse(text: &str) -> Result<Self, ScimError> {
        let bad = || ScimError::bad_request("invalidPath", format!("{text:?} is not a path"));
        let text = filter::strip_schema(text.trim());
        let (head, filter, rest) = match text.find('[') {
            Some(open) => {
                let close = text.rfind(']').filter(|c| *c > open).ok_or_else(bad)?;
                let f = filter::parse(&text[open + 1..close])
                    .map_err(|e| ScimError::bad_request("invalidPath", e.detail))?;
                (&text[..open], Some(f), &text[close + 1..])
            }
            None => (text, None, ""),
        };
        let mut parts = head.splitn(2, '.');
        let attribute = parts.next().filter(|a| !a.is_empty()).ok_or_else(bad)?;
        let sub = match (parts.next(), rest.strip_prefix('.')) {
            (Some(s), _) if filter.is_none() => Some(s.to_string()),
            (None, Some(s)) => Some(s.to_string()),
            (None, None) if rest.is_empty() => None,
            _ => return Err(bad()),
        };
        filter::attribute_path(attribute).map_err(|_| bad())?;
        if let Some(sub) = &sub {
            if sub.contains('.') {
                return Err(bad());
            }
            filter::attribute_path(sub).map_err(|_| bad())?;
        }
        Ok(Path {
            attribute: attribute.to_string(),
            filter,
            sub,
        })
    }
}

/// The key `name` has in `obj` (attribute names are case-insensitive), or `name` itself.
fn key_in(obj: &Map<String, Value>, name: &str) -> String {
    obj.keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

fn set(
    obj: &mut Map<String, Value>,
    path: &Path,
    value: Value,
    add: bool,
) -> Result<(), ScimError> {
    let key = key_in(obj, &path.attribute);
    match (&path.filter, &path.sub) {
        (None, None) => {
            let merged = match (obj.remove(&key), value) {
                // `add` to a multi-valued attribute appends (each value once).
                // Compared by their JSON text: a group's thousands of members stay linear.
                (Some(Value::Array(mut old)), Value::Array(new)) if add => {
                    let mut have: HashSet<String> = old.iter().map(Value::to_string).collect();
                    for v in new {
                        if have.insert(v.to_string()) {
                            old.push(v);
                        }
                    }
                    Value::Array(old)
                }
                (Some(Value::Object(mut old)), Value::Object(new)) if add => {
                    old.extend(new);
                    Value::Object(old)
                }
                (_, v) => v,
            };
            obj.insert(key, merged);
        }
        (None, Some(sub)) => {
            let entry = obj.entry(key).or_insert_with(|| json!({}));
            let Value::Object(inner) = entry else {
                return Err(ScimError::bad_request(
                    "invalidPath",
                    format!("{} has no sub-attributes", path.attribute),
                ));
            };
            let sub_key = key_in(inner, sub);
            inner.insert(sub_key, value);
        }
        (Some(filter), sub) => {
            let Some(Value::Array(items)) = obj.get_mut(&key) else {
                return Err(ScimError::bad_request(
                    "noTarget",
                    format!("{} has no values to filter", path.attribute),
                ));
            };
            let mut hit = false;
            for item in items.iter_mut().filter(|i| filter.matches(i)) {
                hit = true;
                match (sub, item) {
                    (Some(sub), Value::Object(o)) => {
                        let sub_key = key_in(o, sub);
                        o.insert(sub_key, value.clone());
                    }
                    (None, item) => *item = value.clone(),
                    _ => {}
                }
            }
            if !hit {
                return Err(ScimError::bad_request(
                    "noTarget",
                    format!("no value of {} matches the filter", path.attribute),
                ));
            }
        }
    }
    Ok(())
}

fn remove(
    obj: &mut Map<String, Value>,
    path: &Path,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let key = key_in(obj, &path.attribute);
    match (&path.filter, &path.sub) {
        (None, None) => {
            // Azure AD sends `remove members` with the members to remove as its value.
            match (obj.get_mut(&key), value) {
                (Some(Value::Array(items)), Some(Value::Array(gone))) => {
                    let values: HashSet<String> = gone
                        .iter()
                        .filter_map(|g| g.get("value"))
                        .map(Value::to_string)
                        .collect();
                    let whole: HashSet<String> = gone.iter().map(Value::to_string).collect();
                    items.retain(|i| {
                        let by_value = i
                            .get("value")
                            .is_some_and(|v| values.contains(&v.to_string()));
                        !by_value && !whole.contains(&i.to_string())
                    });
                }
                _ => {
                    obj.remove(&key);
                }
            }
        }
        (None, Some(sub)) => {
            if let Some(Value::Object(inner)) = obj.get_mut(&key) {
                let sub_key = key_in(inner, sub);
                inner.remove(&sub_key);
            }
        }
        (Some(filter), sub) => {
            if let Some(Value::Array(items)) = obj.get_mut(&key) {
                match sub {
                    None => items.retain(|i| !filter.matches(i)),
                    Some(sub) => {
                        for item in items.iter_mut().filter(|i| filter.matches(i)) {
                            if let Value::Object(o) = item {
                                let sub_key = key_in(o, sub);
                                o.remove(&sub_key);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_keep_what_the_idp_said_but_never_passwords_or_server_attributes() {
        let body = json!({
            "schemas": [USER_SCHEMA],
            "UserName": "ann@example.com",
            "id": "chosen-by-client",
            "password": "hunter2",
            "groups": [{"value": "g-admins"}],
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [{"value": "ann@example.com", "primary": true}],
            "active": true,
            "externalId": "okta-1"
        });
        let input = input(Kind::User, body).unwrap();
        assert_eq!(input.name(Kind::User), "ann@example.com");
        assert_eq!(input.display_name().as_deref(), Some("Ann Lee"));
        for gone in ["id", "password", "groups", "schemas", "UserName"] {
            assert!(!input.attributes.contains_key(gone), "{gone}");
        }
        let user = User {
            id: "u1".into(),
            login: "ann@example.com".into(),
            name: input.display_name(),
            group_ids: vec!["g1".into()],
            scim: Some(stored(
                &input,
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
            )),
        };
        let r = render_user(
            &user,
            &[("g1".into(), "analysts".into())],
            "http://h/scim/v2",
        );
        assert_eq!(r["id"], "u1");
        assert_eq!(r["externalId"], "okta-1");
        assert_eq!(r["groups"][0]["display"], "analysts");
        assert_eq!(r["meta"]["created"], "2026-01-01T00:00:00Z");
        assert_eq!(r["meta"]["location"], "http://h/scim/v2/Users/u1");
        assert!(r.get("password").is_none());

        for bad in [
            json!({"userName": ""}),
            json!({"userName": 7}),
            json!({"schemas": [GROUP_SCHEMA], "userName": "x"}),
            json!({"userName": "x", "active": "yes"}),
            json!([1]),
        ] {
            assert!(super::input(Kind::User, bad.clone()).is_err(), "{bad}");
        }
        let members = json!({"displayName": "g", "members": [{"display": "no value"}]});
        assert!(super::input(Kind::Group, members).is_err());
    }

    fn ops(ops: Value) -> Value {
        json!({"schemas": [PATCH_SCHEMA], "Operations": ops})
    }

    #[test]
    fn patches_as_okta_and_entra_send_them() {
        let mut user = json!({"userName": "ann", "active": true, "emails": [{"type": "work", "value": "a@x"}], "name": {"givenName": "Ann"}});
        patch(
            &mut user,
            &ops(json!([
                {"op": "replace", "value": {"active": false}},
                {"op": "Replace", "path": "name.familyName", "value": "Lee"},
                {"op": "replace", "path": "emails[type eq \"work\"].value", "value": "ann@x"},
                {"op": "add", "path": "emails", "value": [{"type": "home", "value": "h@x"}]},
                {"op": "remove", "path": "emails[type eq \"home\"]"},
                {"op": "add", "path": "urn:ietf:params:scim:schemas:core:2.0:User:title", "value": "Dr"}
            ])),
        )
        .unwrap();
        assert_eq!(
            user,
            json!({"userName": "ann", "active": false, "emails": [{"type": "work", "value": "ann@x"}], "name": {"givenName": "Ann", "familyName": "Lee"}, "title": "Dr"})
        );

        let mut group = json!({"displayName": "g", "members": [{"value": "u1"}, {"value": "u2"}]});
        patch(
            &mut group,
            &ops(json!([
                {"op": "add", "path": "members", "value": [{"value": "u3"}, {"value": "u1"}]},
                {"op": "remove", "path": "members[value eq \"u2\"]"},
                {"op": "remove", "path": "members", "value": [{"value": "u3"}]}
            ])),
        )
        .unwrap();
        assert_eq!(group["members"], json!([{"value": "u1"}]));

        for bad in [
            json!({"Operations": []}),
            ops(json!([{"op": "move", "path": "x"}])),
            ops(json!([{"op": "remove"}])),
            ops(json!([{"op": "replace", "path": "emails[type eq \"none\"].value", "value": "x"}])),
            ops(json!([{"op": "add", "path": "a.b.c", "value": 1}])),
        ] {
            let mut u = json!({"userName": "ann", "emails": []});
            assert!(patch(&mut u, &bad).is_err(), "{bad}");
        }
    }
}
