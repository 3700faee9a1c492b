//! One retry policy for every backend: exponential backoff with full jitter and an optional
//! attempt limit. A backend only says what an error means ([`ErrorClass`]); this module decides
//! what happens next, so every stage treats the same class of failure the same way:
//!
//! | class | meaning | what happens |
//! |---|---|---|
//! | `Retryable` | the whole backend is away or overloaded (broker down, server read-only, disk full) | wait and try the same work again; never dead-letter |
//! | `PerRecord` | this record (or batch of records) is unacceptable | stop retrying; the caller isolates and dead-letters it |
//! | `Fatal` | a setting or permission is wrong; retrying cannot help | stop retrying; the caller stops the service with the reason |

use rand::Rng;
use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retryable,
    PerRecord,
    Fatal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_backoff: Duration,
    /// `None`: retry retryable errors for as long as it takes (stages that must not lose or skip
    /// anything wait out an outage with their consumer paused).
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

/// Why [`RetryPolicy::run`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum GaveUp<E> {
    #[error("{0}")]
    PerRecord(E),
    #[error("{0}")]
    Fatal(E),
    #[error("still failing after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: E },
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based): uniformly random in the upper half of
    /// an exponentially growing window, capped at `max_backoff`, so instances that failed
    /// together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let window = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_backoff);
        rand::rng().random_range(window / 2..=window)
    }

    /// Runs `op` until it succeeds, fails with an error that is not `Retryable`, or runs out of
    /// attempts. `on_retry` is told of each retryable failure (for health and metrics).
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        classify: impl Fn(&E) -> ErrorClass,
        mut on_retry: impl FnMut(&E),
        mut op: F,
    ) -> Result<T, GaveUp<E>>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match classify(&e) {
                ErrorClass::PerRecord => return Err(GaveUp::PerRecord(e)),
                ErrorClass::Fatal => return Err(GaveUp::Fatal(e)),
                ErrorClass::Retryable => {}
            }
            if self.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(GaveUp::Exhausted {
                    attempts: attempt,
                    last: e,
                });
            }
            on_retry(&e);
            let delay = self.delay(attempt);
            tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, failing_for_s = started.elapsed().as_secs(), "{what} failed; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn fast(max_attempts: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_attempts,
        }
    }

    #[test]
    fn delays_grow_jittered_and_capped() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_attempts: None,
        };
        for _ in 0..100 {
            let d1 = p.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(p.delay(40) <= Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_until_success() {
        let calls = Cell::new(0);
        let retries = Cell::new(0);
        let r: Result<u32, GaveUp<String>> = fast(None)
            .run(
                "op",
                |_| ErrorClass::Retryable,
                |_| retries.set(retries.get() + 1),
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move {
                        if n < 4 {
                            Err(format!("down {n}"))
                        } else {
                            Ok(n)
                        }
                    }
                },
            )
            .await;
        assert_eq!(r.unwrap(), 4);
        assert_eq!(retries.get(), 3);
    }

    #[tokio::test]
    async fn per_record_and_fatal_errors_stop_at_once_and_attempts_are_limited() {
        for (class, want_per_record) in [(ErrorClass::PerRecord, true), (ErrorClass::Fatal, false)]
        {
            let calls = Cell::new(0);
            let r: Result<(), GaveUp<&str>> = fast(None)
                .run(
                    "op",
                    |_| class,
                    |_| {},
                    || {
                        calls.set(calls.get() + 1);
                        async { Err("no") }
                    },
                )
                .await;
            assert_eq!(calls.get(), 1);
            assert_eq!(matches!(r, Err(GaveUp::PerRecord(_))), want_per_record);
        }
        let calls = Cell::new(0);
        let r: Result<(), GaveUp<&str>> = fast(Some(3))
            .run(
                "op",
                |_| ErrorClass::Retryable,
                |_| {},
                || {
                    calls.set(calls.get() + 1);
                    async { Err("down") }
                },
            )
            .await;
        assert!(matches!(r, Err(GaveUp::Exhausted { attempts: 3, .. })));
        assert_eq!(calls.get(), 3);
    }
}
