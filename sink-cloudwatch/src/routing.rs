//! Event type -> log stream, as the seed's export map (`log => datagrok_log`,
//! `error => datagrok_errors`) with globs added; [`StreamMap`] layers the live mappings of the
//! `audit.stream-map` topic over the configured ones.

use audit_schemas::{AvroRecord, StreamMapping};
use globset::{Glob, GlobMatcher};
use std::collections::BTreeMap;

/// The configured routes (`cloudwatch.streams`) with the stream-map topic's on top: a pattern
/// on the topic replaces the configured one, a tombstone brings it back.
#[derive(Debug, Clone, Default)]
pub struct StreamMap {
    configured: BTreeMap<String, String>,
    default_stream: Option<String>,
    live: BTreeMap<String, String>,
    /// `cloudwatch.checkpoint_stream`: the checkpoint witness, which no mapping may send
    /// events to (an event there would read as a forged checkpoint).
    reserved: Option<String>,
    /// Bumped by every change, so the sink rebuilds its routes only when there is one.
    version: u64,
}

impl StreamMap {
    pub fn new(configured: BTreeMap<String, String>, default_stream: Option<String>) -> Self {
        Self {
            configured,
            default_stream,
            live: BTreeMap::new(),
            reserved: None,
            version: 0,
        }
    }

    /// Refuses live mappings to `stream`, the checkpoint witness.
    pub fn reserving(mut self, stream: Option<&str>) -> Self {
        self.reserved = stream.map(String::from);
        self
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Applies one record of the stream-map topic; an empty value deletes the pattern's live
    /// mapping. A record that cannot be used changes nothing and says why.
    pub fn apply_bytes(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let pattern = String::from_utf8_lossy(key).into_owned();
        match value {
            None | Some([]) => {
                self.live.remove(&pattern);
            }
            Some(bytes) => {
                let m = StreamMapping::decode(bytes).map_err(|e| e.to_string())?;
                if m.pattern != pattern {
                    return Err(format!(
                        "mapping under key {pattern:?} has pattern {:?}; they must be the same",
                        m.pattern
                    ));
                }
                m.check().map_err(|e| e.to_string())?;
                if self.reserved.as_deref() == Some(m.stream.as_str()) {
                    return Err(format!(
                        "mapping {pattern:?} names stream {:?}, which is cloudwatch.checkpoint_stream (the checkpoint witness): no events may go there",
                        m.stream
                    ));
                }
                self.live.insert(m.pattern, m.stream);
            }
        }
        self.version += 1;
        Ok(())
    }

    /// Every mapping in effect: configured, then live ones replacing them.
    pub fn effective(&self) -> BTreeMap<String, String> {
        let mut all = self.configured.clone();
        all.extend(self.live.clone());
        all
    }

    pub fn routes(&self) -> Result<Routes, globset::Error> {
        Routes::new(&self.effective(), self.default_stream.clone())
    }
}

pub struct Routes {
    exact: BTreeMap<String, String>,
    /// Longest pattern first, so the most specific glob wins.
    globs: Vec<(GlobMatcher, String)>,
    default_stream: Option<String>,
}

impl Routes {
    pub fn new(
        streams: &BTreeMap<String, String>,
        default_stream: Option<String>,
    ) -> Result<Self, globset::Error> {
        let mut exact = BTreeMap::new();
        let mut globs = Vec::new();
        for (pattern, stream) in streams {
            if pattern.contains(['*', '?', '[', '{']) {
                globs.push((
                    pattern.len(),
                    Glob::new(pattern)?.compile_matcher(),
                    stream.clone(),
                ));
            } else {
                exact.insert(pattern.clone(), stream.clone());
            }
        }
        globs.sort_by_key(|g| std::cmp::Reverse(g.0));
        Ok(Self {
            exact,
            globs: globs.into_iter().map(|(_, m, s)| (m, s)).collect(),
            default_stream,
        })
    }

    /// The stream for a type, or `None` to skip it. `catalog` is the catalog type the event's
    /// type means (the enricher's vocabulary): a route on `connection-created` also takes the
    /// server's `dataConnectionCreated`. A route naming the type itself wins over one naming its
    /// catalog type, and exact routes over globs. The enricher's rule-drop summaries and chain
    /// digests are bookkeeping for ClickHouse (`rule_drops`, `chain_digests`): they go only where
    /// a route names their type exactly, never by a glob or the default stream.
    pub fn stream_for(&self, event_type: &str, catalog: Option<&str>) -> Option<&str> {
        if event_type == audit_schemas::drops::SUMMARY_TYPE
            || event_type == audit_schemas::chain::DIGEST_TYPE
            || event_type == audit_schemas::chain::checkpoint::CHECKPOINT_TYPE
            || event_type == audit_schemas::chain::rotation::ROTATION_TYPE
        {
            return self.exact.get(event_type).map(String::as_str);
        }
        let catalog = catalog.filter(|c| *c != event_type);
        let glob = |t: &str| {
            self.globs
                .iter()
                .find(|(m, _)| m.is_match(t))
                .map(|(_, s)| s)
        };
        self.exact
            .get(event_type)
            .or_else(|| catalog.and_then(|c| self.exact.get(c)))
            .or_else(|| glob(event_type))
            .or_else(|| catalog.and_then(glob))
            .or(self.default_stream.as_ref())
            .map(String::as_str)
    }

    /// Every stream events can go to, for creating them up front.
    pub fn streams(&self) -> impl Iterator<Item = &str> {
        self.exact
            .values()
            .chain(self.globs.iter().map(|(_, s)| s))
            .chain(self.default_stream.iter())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(default: Option<&str>) -> Routes {
        let map = BTreeMap::from([
            ("log".to_string(), "datagrok_log".to_string()),
            ("error".to_string(), "datagrok_errors".to_string()),
            ("query-*".to_string(), "queries".to_string()),
            (
                "query-transformations-*".to_string(),
                "transformations".to_string(),
            ),
            ("*Service.*".to_string(), "server".to_string()),
        ]);
        Routes::new(&map, default.map(String::from)).unwrap()
    }

    #[test]
    fn exact_then_most_specific_glob_then_default() {
        let r = routes(Some("other"));
        assert_eq!(r.stream_for("log", None), Some("datagrok_log"));
        assert_eq!(r.stream_for("error", None), Some("datagrok_errors"));
        assert_eq!(r.stream_for("query-created", None), Some("queries"));
        assert_eq!(
            r.stream_for("query-transformations-edited", None),
            Some("transformations")
        );
        assert_eq!(r.stream_for("userService.create", None), Some("server"));
        assert_eq!(r.stream_for("job-start", None), Some("other"));
        // A server code goes where its catalog type goes, unless a route names the code.
        assert_eq!(
            r.stream_for("dataQueryRan", Some("query-created")),
            Some("queries")
        );
        assert_eq!(
            r.stream_for("userService.create", Some("query-created")),
            Some("server")
        );
        assert_eq!(routes(None).stream_for("job-start", None), None);
        assert_eq!(
            r.stream_for("audit.rule-drops", None),
            None,
            "summaries: exact routes only"
        );
        assert_eq!(r.stream_for("audit.rule-set", None), Some("other"));
    }

    #[test]
    fn live_mappings_replace_configured_ones_until_deleted() {
        let configured = BTreeMap::from([("log".to_string(), "datagrok_log".to_string())]);
        let mut map = StreamMap::new(configured, None).reserving(Some("audit_checkpoints"));
        let put = |m: &mut StreamMap, p: &str, s: &str| {
            let record = StreamMapping {
                pattern: p.into(),
                stream: s.into(),
            };
            m.apply_bytes(p.as_bytes(), Some(&record.encode().unwrap()))
        };
        put(&mut map, "log", "logs-v2").unwrap();
        put(&mut map, "query-*", "queries").unwrap();
        let routes = map.routes().unwrap();
        assert_eq!(routes.stream_for("log", None), Some("logs-v2"));
        assert_eq!(routes.stream_for("query-edited", None), Some("queries"));
        let v = map.version();
        map.apply_bytes(b"log", None).unwrap();
        assert!(map.version() > v);
        assert_eq!(
            map.routes().unwrap().stream_for("log", None),
            Some("datagrok_log")
        );
        // Refused, and nothing changes.
        let v = map.version();
        assert!(put(&mut map, "job-*", "a:b").is_err());
        let mismatched = StreamMapping {
            pattern: "x".into(),
            stream: "s".into(),
        };
        assert!(map
            .apply_bytes(b"y", Some(&mismatched.encode().unwrap()))
            .is_err());
        assert!(map.apply_bytes(b"z", Some(b"garbage")).is_err());
        let witness = put(&mut map, "log", "audit_checkpoints").unwrap_err();
        assert!(witness.contains("checkpoint_stream"), "{witness}");
        assert_eq!(map.version(), v);
    }
}
