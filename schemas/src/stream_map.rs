//! Routes of the CloudWatch sink on the compacted `audit.stream-map` topic: event type (or glob)
//! to log stream, set by `auditctl streams` and picked up by running sinks without a restart.

use serde::{Deserialize, Serialize};

/// One route, keyed on the topic by its pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMapping {
    /// An event type or a glob (`query-*`).
    pub pattern: String,
    pub stream: String,
}

/// Why a mapping cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamMappingError {
    #[error("pattern {0:?} is not a valid glob: {1}")]
    Pattern(String, String),
    #[error("stream {0:?}: {1}")]
    Stream(String, &'static str),
}

impl StreamMapping {
    /// What CloudWatch and the sink's router would refuse, refused before publishing.
    pub fn check(&self) -> Result<(), StreamMappingError> {
        globset::Glob::new(&self.pattern)
            .map_err(|e| StreamMappingError::Pattern(self.pattern.clone(), e.to_string()))?;
        check_stream_name(&self.stream)
    }
}

/// CloudWatch's rules for a log stream name: 1 to 512 characters, no `:` or `*`.
pub fn check_stream_name(name: &str) -> Result<(), StreamMappingError> {
    let bad = |why| Err(StreamMappingError::Stream(name.to_string(), why));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.chars().count() > 512 {
        return bad("is longer than 512 characters");
    }
    if name.contains([':', '*']) {
        return bad("must not contain ':' or '*'");
    }
    if name.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_patterns_and_stream_names_are_refused() {
        let m = |p: &str, s: &str| StreamMapping {
            pattern: p.into(),
            stream: s.into(),
        };
        assert!(m("query-*", "queries").check().is_ok());
        assert!(matches!(
            m("query-[", "q").check(),
            Err(StreamMappingError::Pattern(..))
        ));
        for bad in ["", "a:b", "a*", "a\nb"] {
            assert!(m("log", bad).check().is_err(), "{bad:?}");
        }
    }
}
