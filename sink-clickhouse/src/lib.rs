//! Enriched audit events into ClickHouse.
//!
//! - [`config`]: the settings.
//! - [`migrations`]: the versioned schema (events, entity activity, user/session projections).
//! - [`derived`]: what the materialized views derive from `events`, as a verifier's queries.
//! - [`encoder`]: event -> row, and the effectively-once resume rule (pure).
//! - [`service`]: the ClickHouse I/O: retries, bisection of rejected rows, stored offsets.
//! - [`sink`]: the batch handler wiring it together.

pub mod config;
pub mod derived;
pub mod encoder;
pub mod migrations;
pub mod service;
pub mod sink;

/// A client for the configured server and database.
pub fn client(cfg: &config::ClickHouseConfig) -> clickhouse::Client {
    let mut client = clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_database(&cfg.database);
    if let Some(user) = &cfg.user {
        client = client.with_user(user);
    }
    if let Some(password) = &cfg.password {
        client = client.with_password(password);
    }
    client
}
