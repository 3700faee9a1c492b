//! What one credential, and all of them together, may hold of the ingest API at once.
//!
//! The in-flight cap alone let one holder of a valid token (a browser's, say) take every
//! request slot with megabyte bodies, each parsed into a JSON tree several times its size. So
//! every request is charged to its caller before its body is read: one request slot and its
//! body's bytes (its `Content-Length`, else `http.max_body_bytes`), and once the body's shape is
//! known, 64 bytes for each JSON value it will parse into. A caller past its share gets 429 and
//! everybody past the global budget 503, both with `Retry-After`; other callers are untouched.
//!
//! Callers are keyed by what they prove: a service token's service, a browser token's user, an
//! anonymous sender's address. Keys are forgotten when their last request ends, so the table
//! holds at most one entry per request in flight.

use crate::body::{Caller, CallerCredential};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes a parsed JSON value is charged: a `serde_json::Value` and its share of the map or
/// vector holding it.
pub const BYTES_PER_JSON_VALUE: usize = 64;

/// Who a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    Service(String),
    Browser { user: String },
    Anonymous(Option<IpAddr>),
}

impl CallerKey {
    pub fn of(caller: &Caller, sender: Option<IpAddr>) -> Self {
        match &caller.credential {
            Some(CallerCredential::Browser(identity)) => CallerKey::Browser {
                user: identity.user_id.clone(),
            },
            Some(CallerCredential::Anonymous) => CallerKey::Anonymous(sender),
            Some(CallerCredential::Service) | None => CallerKey::Service(caller.service.clone()),
        }
    }

    /// The metrics label: the credential's class, never its identity (bounded cardinality).
    pub fn class(&self) -> &'static str {
        match self {
            CallerKey::Service(_) => "service",
            CallerKey::Browser { .. } => "browser",
            CallerKey::Anonymous(_) => "anonymous",
        }
    }
}

/// The limits, from `http.*`.
#[derive(Debug, Clone, Copy)]
pub struct QuotaLimits {
    pub requests_per_caller: usize,
    pub bytes_per_caller: usize,
    /// A browser token's user gets less: a page sends a few requests at a time, and browser
    /// tokens are many and in many hands.
    pub requests_per_browser: usize,
    pub bytes_per_browser: usize,
    pub bytes_in_flight: usize,
}

impl QuotaLimits {
    fn share(&self, key: &CallerKey) -> (usize, usize) {
        match key {
            CallerKey::Browser { .. } | CallerKey::Anonymous(_) => {
                (self.requests_per_browser, self.bytes_per_browser)
            }
            CallerKey::Service(_) => (self.requests_per_caller, self.bytes_per_caller),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    #[error("this credential has {held} requests in flight, the most it may (http.max_requests_per_caller, or http.max_requests_per_browser for a browser token or an anonymous sender); retry after 1 second")]
    CallerRequests { held: usize },
    #[error("this credential's requests in flight hold {held} bytes and this one needs {wanted} more, past its share of {limit} (http.max_bytes_per_caller, or http.max_bytes_per_browser); retry after 1 second")]
    CallerBytes {
        held: usize,
        wanted: usize,
        limit: usize,
    },
    #[error("the ingest API holds as many request bytes as it may (http.max_bytes_in_flight); retry after 1 second")]
    Global,
}

impl Limited {
    /// 429 for the caller's own share, 503 for the server's.
    pub fn status(&self) -> u16 {
        match self {
            Limited::CallerRequests { .. } | Limited::CallerBytes { .. } => 429,
            Limited::Global => 503,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Limited::CallerRequests { .. } => "requests_per_caller",
            Limited::CallerBytes { .. } => "bytes_per_caller",
            Limited::Global => "bytes_in_flight",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    requests: usize,
    bytes: usize,
}

#[derive(Debug)]
struct Table {
    callers: HashMap<CallerKey, Usage>,
    total_bytes: usize,
}

/// The shared account of every request in flight.
#[derive(Debug)]
pub struct Quotas {
    limits: QuotaLimits,
    table: Mutex<Table>,
}

impl Quotas {
    pub fn new(limits: QuotaLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            table: Mutex::new(Table {
                callers: HashMap::new(),
                total_bytes: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every update below is a few additions that leave the table valid at each step.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges a new request of `key` with `bytes`; the ticket gives it all back when dropped.
    pub fn admit(self: &Arc<Self>, key: CallerKey, bytes: usize) -> Result<Ticket, Limited> {
        let mut table = self.lock();
        let usage = table.callers.get(&key).copied().unwrap_or_default();
        let (max_requests, _) = self.limits.share(&key);
        if usage.requests >= max_requests {
            return Err(Limited::CallerRequests {
                held: usage.requests,
            });
        }
        Self::check(&self.limits, &key, &table, usage, bytes)?;
        table.total_bytes += bytes;
        let entry = table.callers.entry(key.clone()).or_default();
        entry.requests += 1;
        entry.bytes += bytes;
        Ok(Ticket {
            quotas: self.clone(),
            key,
            bytes: Mutex::new(bytes),
        })
    }

    fn check(
        limits: &QuotaLimits,
        key: &CallerKey,
        table: &Table,
        usage: Usage,
        more: usize,
    ) -> Result<(), Limited> {
        let (_, max_bytes) = limits.share(key);
        if usage.bytes.saturating_add(more) > max_bytes {
            return Err(Limited::CallerBytes {
                held: usage.bytes,
                wanted: more,
                limit: max_bytes,
            });
        }
        if table.total_bytes.saturating_add(more) > limits.bytes_in_flight {
            return Err(Limited::Global);
        }
        Ok(())
    }

    /// Bytes charged to every request in flight.
    pub fn bytes_in_flight(&self) -> usize {
        self.lock().total_bytes
    }

    /// Callers with a request in flight.
    pub fn callers(&self) -> usize {
        self.lock().callers.len()
    }
}

/// One request's charge.
#[derive(Debug)]
pub struct Ticket {
    quotas: Arc<Quotas>,
    key: CallerKey,
    bytes: Mutex<usize>,
}

impl Ticket {
    pub fn key(&self) -> &CallerKey {
        &self.key
    }

    /// Charges `more` bytes to the request (its parsed size, once known).
    pub fn grow(&self, more: usize) -> Result<(), Limited> {
        let mut table = self.quotas.lock();
        let usage = table.callers.get(&self.key).copied().unwrap_or_default();
        Quotas::check(&self.quotas.limits, &self.key, &table, usage, more)?;
        table.total_bytes += more;
        if let Some(u) = table.callers.get_mut(&self.key) {
            u.bytes += more;
        }
        drop(table);
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) += more;
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let bytes = *self.bytes.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut table = self.quotas.lock();
        table.total_bytes = table.total_bytes.saturating_sub(bytes);
        if let Some(u) = table.callers.get_mut(&self.key) {
            u.requests = u.requests.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes);
            if u.requests == 0 {
                table.callers.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Arc<Quotas> {
        Quotas::new(QuotaLimits {
            requests_per_caller: 2,
            bytes_per_caller: 100,
            requests_per_browser: 1,
            bytes_per_browser: 50,
            bytes_in_flight: 150,
        })
    }

    fn svc(name: &str) -> CallerKey {
        CallerKey::Service(name.into())
    }

    #[test]
    fn one_caller_is_held_to_its_share_and_others_are_not() {
        let q = quotas();
        let a1 = q.admit(svc("a"), 40).unwrap();
        let _a2 = q.admit(svc("a"), 40).unwrap();
        assert!(matches!(
            q.admit(svc("a"), 1),
            Err(Limited::CallerRequests { held: 2 })
        ));
        assert!(matches!(a1.grow(30), Err(Limited::CallerBytes { .. })));
        // Another caller still gets in, up to the global budget.
        let b = q.admit(svc("b"), 60).unwrap();
        assert_eq!(q.admit(svc("c"), 20).unwrap_err(), Limited::Global);
        assert_eq!(q.bytes_in_flight(), 140);
        drop(b);
        drop(a1);
        assert_eq!(q.bytes_in_flight(), 40);
        assert!(q.admit(svc("a"), 50).is_ok());
    }

    #[test]
    fn browser_users_get_the_smaller_share_each() {
        let q = quotas();
        let alice = || CallerKey::Browser {
            user: "alice".into(),
        };
        let _a = q.admit(alice(), 10).unwrap();
        assert!(matches!(
            q.admit(alice(), 10),
            Err(Limited::CallerRequests { held: 1 })
        ));
        let bob = q
            .admit(CallerKey::Browser { user: "bob".into() }, 10)
            .unwrap();
        assert!(matches!(
            bob.grow(45),
            Err(Limited::CallerBytes { limit: 50, .. })
        ));
    }

    #[test]
    fn everything_is_given_back_and_keys_are_forgotten() {
        let q = quotas();
        {
            let t = q.admit(svc("a"), 10).unwrap();
            t.grow(20).unwrap();
            let _u = q.admit(CallerKey::Anonymous(None), 5).unwrap();
            assert_eq!(q.callers(), 2);
            assert_eq!(q.bytes_in_flight(), 35);
        }
        assert_eq!(q.bytes_in_flight(), 0);
        assert_eq!(q.callers(), 0);
    }

    #[test]
    fn statuses_tell_the_caller_apart_from_the_server() {
        assert_eq!(Limited::CallerRequests { held: 1 }.status(), 429);
        assert_eq!(Limited::Global.status(), 503);
    }
}
