//! Object locators of the server product's audit log, e.g.
//! `object:!tenant:defaultTenant~directory:__Root__~scheduled-task:23ff…~execution-plan:fc0e…`.
//!
//! A locator is a path of `kind:id` segments joined by `~`; the last segment names the object.
//! Node locators have no tenant and end in a `child` segment (`object:element:…~child:…`): the
//! child of a data-flow element.

use crate::EntityRef;

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
    let segs = segments(text)?;
    let (kind, id) = *segs.last()?;
    if kind == "tenant" {
        return None;
    }
    let kind = match (kind, segs.len().checked_sub(2).map(|i| segs[i])) {
        ("child", Some((parent, _))) => format!("{parent}-child"),
        _ => kind.to_string(),
    };
    Some(EntityRef {
        name: decode_name(id),
        kind,
        id: id.to_string(),
    })
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
    fn not_locators() {
        assert!(entity("//admin/My Data Collection#data-collection").is_none());
        assert!(entity("object:!tenant:defaultTenant").is_none());
        assert!(entity("object:").is_none());
        assert!(entity("object:nocolon").is_none());
        assert!(entity("User1234").is_none());
    }
}
