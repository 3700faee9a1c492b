//! Object locators of the server product's audit log, e.g.
//! `object:!tenant:defaultTenant~directory:__Root__~scheduled-task:23ff…~execution-plan:fc0e…`.
//!
//! A locator is a path of `kind:id` segments joined by `~`; the last segment names the object.
//! Node locators have no tenant and end in a `child` segment (`object:element:…~child:…`): the
//! child of a data-flow element.

use crate::{EntityRef, EntityRole};

const PREFIX: &str = "object:";

/// The `kind:id` segments of a locator, or `None` when the text is not one.
pub fn segments(text: &str) -> Option<Vec<(&str, &str)>> {
    let path = text.strip_prefix(PREFIX)?;
    let mut out = Vec::new();
    for segment in path.split('~') {
        let segment = segment.strip_prefix('!').unwrap_or(segment);
        let (kind, id) = segment.split_once(':')?;
        if kind.is_empty() || id.is_empty() {
            return None;
        }
        out.push((kind, id));
    }
    (!out.is_empty()).then_some(out)
}

/// The entity a locator points at: its last segment. A trailing `child` segment is reported as
/// `<parent kind>-child` so that a data-flow node is not confused with any other `child`.
pub fn entity(text: &str) -> Option<EntityRef> {
    entities(text)?.pop()
}

/// Every entity a locator names: the earlier segments (the tenant excepted) as containers,
/// outermost first, then the last segment as the target. A segment repeating the target (the
/// product writes `…~directory:X~directory:X`) is not also its container.
pub fn entities(text: &str) -> Option<Vec<EntityRef>> {
    let segs = segments(text)?;
    let (kind, id) = *segs.last()?;
    if kind == "tenant" {
        return None;
    }
    let target_kind = match (kind, segs.len().checked_sub(2).map(|i| segs[i])) {
        ("child", Some((parent, _))) => format!("{parent}-child"),
        _ => kind.to_string(),
    };
    let mut out: Vec<EntityRef> = segs[..segs.len() - 1]
        .iter()
        .filter(|(k, i)| *k != "tenant" && !(*k == kind && *i == id))
        .map(|&(k, i)| EntityRef {
            role: EntityRole::Container,
            ..EntityRef::target(k, i, decode_name(i))
        })
        .collect();
    out.push(EntityRef::target(target_kind, id, decode_name(id)));
    Some(out)
}

/// Longest resource path read, and most segments: anything longer is not taken apart.
const MAX_PATH_BYTES: usize = 4096;
const MAX_PATH_SEGMENTS: usize = 64;

/// The entities of a resource path such as
/// `//admin/My Data Collection#data-collection/file_1.txt#data-file`: each `name#kind` segment
/// (a first segment without a kind after `//` is a workspace, a later one a data directory, the
/// last a data file). A path names no ids, so each entity's id is the path up to and including
/// it, which is unique where the name alone is not. `None` when the text is not such a path:
/// it must start with `//`, or with `/` and carry a `#kind`.
pub fn resource_path(text: &str) -> Option<Vec<EntityRef>> {
    if text.len() > MAX_PATH_BYTES {
        return None;
    }
    let (rest, workspace_first) = match text.strip_prefix("//") {
        Some(rest) => (rest, true),
        None => (
            text.strip_prefix('/').filter(|_| text.contains('#'))?,
            false,
        ),
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > MAX_PATH_SEGMENTS || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let prefix = &text[..text.len() - rest.len()];
    let mut out = Vec::with_capacity(parts.len());
    let mut end = prefix.len();
    for (i, part) in parts.iter().enumerate() {
        end += part.len() + usize::from(i > 0);
        let last = i + 1 == parts.len();
        let (name, kind) = match part.rsplit_once('#') {
            Some((name, kind)) if !name.is_empty() && !kind.is_empty() => (name, kind),
            Some(_) => return None,
            None if i == 0 && workspace_first => (*part, "workspace"),
            None if last => (*part, "data-file"),
            None => (*part, "data-directory"),
        };
        let role = if last {
            EntityRole::Target
        } else {
            EntityRole::Container
        };
        out.push(EntityRef {
            role,
            ..EntityRef::target(kind, &text[..end], Some(name.to_string()))
        });
    }
    Some(out)
}

/// Ids that are names carry `_XX` hex escapes (`My_20Data_20Folder`, `file_5F1_2Etxt`); the
/// decoded name is kept beside the id when there is one.
fn decode_name(id: &str) -> Option<String> {
    let bytes = id.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut decoded_any = false;
    while i < bytes.len() {
        if bytes[i] == b'_' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                decoded_any = true;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    if !decoded_any {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Upper-case hex only: the escapes are upper-case, and `_ab` in an ordinary id is not one.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_of_a_tenant_locator() {
        let e = entity("object:!tenant:defaultTenant~directory:__Root__~directory:shared~scheduled-task:23ffaaaf~execution-plan:fc0e522c").unwrap();
        assert_eq!(
            (e.kind.as_str(), e.id.as_str(), e.name),
            ("execution-plan", "fc0e522c", None)
        );
    }

    #[test]
    fn node_locator_with_child() {
        let e = entity("object:element:27c4ad3e~child:e325f4fe").unwrap();
        assert_eq!(
            (e.kind.as_str(), e.id.as_str()),
            ("element-child", "e325f4fe")
        );
    }

    #[test]
    fn escaped_names_are_decoded() {
        let e = entity("object:!tenant:t~data-collection:5d77~data-file:file_5F1_2Etxt").unwrap();
        assert_eq!(e.name.as_deref(), Some("file_1.txt"));
        let d = entity("object:!tenant:t~data-directory:My_20Data_20Folder").unwrap();
        assert_eq!(d.name.as_deref(), Some("My Data Folder"));
    }

    #[test]
    fn containers_come_before_the_target() {
        let es = entities("object:!tenant:defaultTenant~directory:__Root__~directory:__Users__~directory:c5eb~scheduled-task:6e14").unwrap();
        let got: Vec<_> = es
            .iter()
            .map(|e| (e.kind.as_str(), e.id.as_str(), e.role))
            .collect();
        assert_eq!(
            got,
            vec![
                ("directory", "__Root__", EntityRole::Container),
                ("directory", "__Users__", EntityRole::Container),
                ("directory", "c5eb", EntityRole::Container),
                ("scheduled-task", "6e14", EntityRole::Target),
            ]
        );
        // The product repeats a deleted folder's segment: it is the target, not its container.
        let es = entities("object:!tenant:t~directory:a~directory:b~directory:b").unwrap();
        assert_eq!(es.len(), 2);
        assert_eq!((es[1].id.as_str(), es[1].role), ("b", EntityRole::Target));
        let node = entities("object:element:27c4~child:e325").unwrap();
        assert_eq!(
            (node[0].kind.as_str(), node[0].role),
            ("element", EntityRole::Container)
        );
    }

    #[test]
    fn resource_paths() {
        let es = resource_path("//admin/My Data Collection#data-collection/file_1.txt#data-file")
            .unwrap();
        let got: Vec<_> = es
            .iter()
            .map(|e| {
                (
                    e.kind.as_str(),
                    e.id.as_str(),
                    e.name.as_deref().unwrap(),
                    e.role,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("workspace", "//admin", "admin", EntityRole::Container),
                (
                    "data-collection",
                    "//admin/My Data Collection#data-collection",
                    "My Data Collection",
                    EntityRole::Container
                ),
                (
                    "data-file",
                    "//admin/My Data Collection#data-collection/file_1.txt#data-file",
                    "file_1.txt",
                    EntityRole::Target
                ),
            ]
        );
        let mount =
            resource_path("/Users#directory/admin#directory/My Data Collection#data-collection")
                .unwrap();
        assert_eq!(mount[0].id, "/Users#directory");
        assert_eq!(mount[2].kind, "data-collection");
        let file = resource_path("//Public Documents/Public data#data-collection/samples#data-directory/Transactions.csv").unwrap();
        assert_eq!(file.last().unwrap().kind, "data-file");
        assert!(resource_path("/unresolved path").is_none());
        assert!(resource_path("file:///C:/test/").is_none());
        assert!(resource_path("//a//b").is_none());
        assert!(resource_path(&format!("//{}", "a/".repeat(100))).is_none());
    }

    #[test]
    fn not_locators() {
        assert!(entity("//admin/My Data Collection#data-collection").is_none());
        assert!(entity("object:!tenant:defaultTenant").is_none());
        assert!(entity("object:").is_none());
        assert!(entity("object:nocolon").is_none());
        assert!(entity("User1234").is_none());
    }
}
