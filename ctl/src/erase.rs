//! `auditctl erase --user ID`: a person's data erased from the stored trail (GDPR article 17)
//! without breaking a proof.
//!
//! Every personal value is committed in the signed content through a salted digest
//! (`docs/proof-format.md` §2), so erasing means blanking the cleartext columns
//! (`encoder::ERASABLE_COLUMNS`) and the row's salt: the content and every proof over it stay
//! valid, and without the salt the value cannot be recovered by guessing. The erasure is itself
//! on record first: erasure records (`audit.personal-data-erased`, naming the events, never the
//! person) go through the pipeline, and only once they are stored are the rows blanked, so
//! `verify` reports the rows `ERASED` under a signed record and a blanking without one as
//! tampering.

use crate::operator::Actor;
use crate::settings::Settings;
use crate::verify;
use anyhow::{bail, Context, Result};
use audit_schemas::control::{self, ERASURE_IDS_PER_RECORD, ERASURE_TYPE};
use audit_sink_clickhouse::encoder::ERASABLE_COLUMNS;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct EraseArgs {
    /// The person whose data to erase: every stored event whose resolved user id or claimed
    /// user id is this.
    #[arg(long, value_name = "USER_ID")]
    user: String,
    /// Why: the request's reference, kept in the erasure record (not the person's name).
    #[arg(long)]
    reason: String,
    /// Count what would be erased; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long to wait for the erasure records to be stored (through the enricher and the
    /// ClickHouse sink) before the rows are blanked.
    #[arg(long, default_value_t = 120)]
    wait_seconds: u64,
}

/// Most event ids one ClickHouse mutation names.
const IDS_PER_MUTATION: usize = 1_000;

pub async fn run(args: EraseArgs, settings: &Settings, actor: &Actor) -> Result<()> {
    if args.user.is_empty() {
        bail!("--user must name a user id");
    }
    if args.reason.trim().is_empty() {
        bail!("--reason must say why (the request's reference): it is kept in the erasure record");
    }
    let db = verify::client(&settings.clickhouse);
    let ids: Vec<String> = db
        .query(
            "SELECT DISTINCT toString(event_id) FROM events
             WHERE (user_id = ? OR claimed_user_id = ?) AND chain_salt != '' AND chain_content != ''
             ORDER BY 1",
        )
        .bind(&args.user)
        .bind(&args.user)
        .fetch_all()
        .await
        .context("finding the user's events")?;
    let v1_only: u64 = db
        .query(
            "SELECT count() FROM events
             WHERE (user_id = ? OR claimed_user_id = ?) AND chain_content = '' AND chain_seq >= 0",
        )
        .bind(&args.user)
        .bind(&args.user)
        .fetch_one()
        .await
        .context("counting the user's older events")?;
    if v1_only > 0 {
        eprintln!(
            "note: {v1_only} older events (v1 links only, before the v2 content) hold this user; their content commits nothing, so erasing them would break their proofs: they are left"
        );
    }
    if ids.is_empty() {
        println!("No stored event of this user holds personal data to erase.");
        return Ok(());
    }
    if args.dry_run {
        println!(
            "Would erase the personal data of {} events ({} erasure records); nothing changed.",
            ids.len(),
            ids.len().div_ceil(ERASURE_IDS_PER_RECORD)
        );
        return Ok(());
    }
    let operator = actor.identify()?;
    let uuids = ids
        .iter()
        .map(|s| Uuid::parse_str(s))
        .collect::<Result<Vec<_>, _>>()
        .context("an event id ClickHouse returned")?;
    let erasure_id = Uuid::new_v4();
    let parts = uuids.len().div_ceil(ERASURE_IDS_PER_RECORD);
    let records: Vec<_> = uuids
        .chunks(ERASURE_IDS_PER_RECORD)
        .enumerate()
        .map(|(i, chunk)| {
            control::erasure_event(&operator, erasure_id, (i + 1, parts), chunk, &args.reason)
        })
        .collect();
    crate::operator::publish(settings, &records)
        .await
        .context("publishing the erasure records; nothing was erased")?;
    wait_stored(
        &db,
        erasure_id,
        parts,
        Duration::from_secs(args.wait_seconds),
    )
    .await?;
    for chunk in ids.chunks(IDS_PER_MUTATION) {
        let blank: Vec<String> = ERASABLE_COLUMNS
            .iter()
            .map(|c| format!("{c} = NULL"))
            .collect();
        let list = chunk.to_vec();
        db.query(&format!(
            "ALTER TABLE events UPDATE {}, chain_salt = '' WHERE has(?, toString(event_id))
             SETTINGS mutations_sync = 2",
            blank.join(", ")
        ))
        .bind(&list)
        .execute()
        .await
        .context("erasing from events")?;
        db.query(
            "ALTER TABLE entity_activity UPDATE user_id = NULL, user_login = NULL
             WHERE has(?, toString(event_id)) SETTINGS mutations_sync = 2",
        )
        .bind(&list)
        .execute()
        .await
        .context("erasing from entity_activity")?;
        // A skipped copy's v1 content holds the claimed user and client in clear.
        db.query(
            "ALTER TABLE chain_skips UPDATE content = '' WHERE has(?, toString(event_id))
             SETTINGS mutations_sync = 2",
        )
        .bind(&list)
        .execute()
        .await
        .context("erasing from chain_skips")?;
    }
    println!(
        "Erased the personal data of {} events (erasure {erasure_id}, {parts} records, by {}): columns {} and each row's salt. Kafka topics and CloudWatch keep their copies until their retention ends.",
        ids.len(),
        operator.id,
        ERASABLE_COLUMNS.join(", ")
    );
    Ok(())
}

/// Waits until every part of erasure `id` is stored with its link under a signed checkpoint:
/// a row blanked before its record is on record would read as tampering.
async fn wait_stored(
    db: &clickhouse::Client,
    id: Uuid,
    parts: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Stored, and under a signed checkpoint: `verify` proves the record right away.
        let stored: u64 = db
            .query(
                "SELECT uniqExact(e.params['part']) FROM events AS e
                 INNER JOIN chain_checkpoints AS c
                   ON c.raw_partition = e.raw_partition AND c.epoch = e.chain_epoch
                 WHERE e.event_type = ? AND JSONExtractString(e.params['erasure_id']) = ?
                   AND e.chain_content != '' AND e.chain_seq >= 0
                   AND c.tree_size > toUInt64(e.chain_seq)",
            )
            .bind(ERASURE_TYPE)
            .bind(id.to_string())
            .fetch_one()
            .await
            .context("looking for the erasure records")?;
        if stored >= parts as u64 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{stored} of the {parts} erasure records of erasure {id} are stored after {timeout:?} (is the pipeline running?); nothing was erased: run again when it is"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
