//! Metric labels that never take an unbounded value from senders: every distinct label value is
//! a time series held in memory until the process ends, so a sender inventing event types or
//! group names must not be able to grow them. Catalog types and names an operator configured
//! (rules, services) keep their names; anything else is counted under [`OTHER`].

use audit_schemas::catalog;

/// The label value of everything outside the known set.
pub const OTHER: &str = "other";

/// The event type's name when it is in the catalog, else [`OTHER`].
pub fn event_type(name: &str) -> &'static str {
    catalog::lookup(name).map_or(OTHER, |e| e.name)
}

/// `value` when `known` says an operator configured it, else [`OTHER`].
pub fn configured(value: &str, known: impl FnOnce(&str) -> bool) -> String {
    if known(value) {
        value.to_string()
    } else {
        OTHER.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_catalog_types_keep_their_names() {
        assert_eq!(event_type("query-created"), "query-created");
        assert_eq!(event_type("attacker-invented-1234"), OTHER);
        assert_eq!(configured("analysts", |g| g == "analysts"), "analysts");
        assert_eq!(configured("random-9", |g| g == "analysts"), OTHER);
    }
}
