//! Event type -> log stream, as the seed's export map (`log => datagrok_log`,
//! `error => datagrok_errors`) with globs added.

use globset::{Glob, GlobMatcher};
use std::collections::BTreeMap;

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

    /// The stream for a type, or `None` to skip it. The enricher's rule-drop summaries are
    /// bookkeeping for ClickHouse's `rule_drops`: they go only where a route names their type
    /// exactly, never by a glob or the default stream.
    pub fn stream_for(&self, event_type: &str) -> Option<&str> {
        if event_type == audit_schemas::drops::SUMMARY_TYPE {
            return self.exact.get(event_type).map(String::as_str);
        }
        self.exact
            .get(event_type)
            .or_else(|| {
                self.globs
                    .iter()
                    .find(|(m, _)| m.is_match(event_type))
                    .map(|(_, s)| s)
            })
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
        assert_eq!(r.stream_for("log"), Some("datagrok_log"));
        assert_eq!(r.stream_for("error"), Some("datagrok_errors"));
        assert_eq!(r.stream_for("query-created"), Some("queries"));
        assert_eq!(
            r.stream_for("query-transformations-edited"),
            Some("transformations")
        );
        assert_eq!(r.stream_for("userService.create"), Some("server"));
        assert_eq!(r.stream_for("job-start"), Some("other"));
        assert_eq!(routes(None).stream_for("job-start"), None);
        assert_eq!(
            r.stream_for("audit.rule-drops"),
            None,
            "summaries: exact routes only"
        );
        assert_eq!(r.stream_for("audit.rule-set"), Some("other"));
    }
}
