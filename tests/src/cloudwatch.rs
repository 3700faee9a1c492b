//! Reading back what the CloudWatch sink wrote to moto (or LocalStack).

use aws_sdk_cloudwatchlogs::Client;
use std::collections::BTreeMap;
use std::time::Duration;

/// A CloudWatch Logs client for the emulator at `endpoint` with fixed test credentials.
pub async fn logs_client(endpoint: &str) -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await;
    Client::new(&config)
}

/// The sink's default `cloudwatch.checkpoint_stream`: the checkpoints' witness, not events.
pub const WITNESS_STREAM: &str = "audit_checkpoints";

/// Every events stream of `group` (all but [`WITNESS_STREAM`]) with its events (timestamp,
/// parsed JSON body), in stored order. A group that does not exist yet reads as empty.
pub async fn read_group(
    client: &Client,
    group: &str,
) -> anyhow::Result<BTreeMap<String, Vec<(i64, serde_json::Value)>>> {
    let mut all = read_streams(client, group).await?;
    all.remove(WITNESS_STREAM);
    Ok(all)
}

/// The witness stream's entries (timestamp, parsed JSON: a signed checkpoint each).
pub async fn read_witness(
    client: &Client,
    group: &str,
) -> anyhow::Result<Vec<(i64, serde_json::Value)>> {
    Ok(read_streams(client, group)
        .await?
        .remove(WITNESS_STREAM)
        .unwrap_or_default())
}

/// Every stream of `group`, the witness too.
async fn read_streams(
    client: &Client,
    group: &str,
) -> anyhow::Result<BTreeMap<String, Vec<(i64, serde_json::Value)>>> {
    let mut out = BTreeMap::new();
    let Ok(streams) = client
        .describe_log_streams()
        .log_group_name(group)
        .send()
        .await
    else {
        return Ok(out);
    };
    for s in streams.log_streams() {
        let name = s.log_stream_name().unwrap_or_default().to_string();
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = client
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(&name)
                .start_from_head(true)
                .set_next_token(token.clone())
                .send()
                .await?;
            for e in page.events() {
                events.push((
                    e.timestamp().unwrap_or_default(),
                    serde_json::from_str(e.message().unwrap_or_default())?,
                ));
            }
            let next = page.next_forward_token().map(String::from);
            if page.events().is_empty() || next == token {
                break;
            }
            token = next;
        }
        out.insert(name, events);
    }
    Ok(out)
}

/// [`read_group`] until it holds at least `total` events or `timeout` passes.
pub async fn wait_for_events(
    client: &Client,
    group: &str,
    total: usize,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, Vec<(i64, serde_json::Value)>>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = read_group(client, group).await?;
        let n: usize = got.values().map(Vec::len).sum();
        if n >= total || tokio::time::Instant::now() > deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// For every event of `group` whose message contains `marker`: CloudWatch's ingestion time
/// minus the event's timestamp, in milliseconds.
pub async fn ingestion_delays_ms(
    client: &Client,
    group: &str,
    marker: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    let Ok(streams) = client
        .describe_log_streams()
        .log_group_name(group)
        .send()
        .await
    else {
        return Ok(out);
    };
    for s in streams.log_streams() {
        let name = s.log_stream_name().unwrap_or_default();
        let mut token: Option<String> = None;
        loop {
            let page = client
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(name)
                .start_from_head(true)
                .set_next_token(token.clone())
                .send()
                .await?;
            for e in page.events() {
                if e.message().is_some_and(|m| m.contains(marker)) {
                    if let (Some(t), Some(ingested)) = (e.timestamp(), e.ingestion_time()) {
                        out.push((ingested - t) as f64);
                    }
                }
            }
            let next = page.next_forward_token().map(String::from);
            if page.events().is_empty() || next == token {
                break;
            }
            token = next;
        }
    }
    Ok(out)
}

/// [`read_group`] until it holds at least `distinct` different event ids (`event.event_id`) or
/// `timeout` passes. Counting distinct ids, not events: after a crash the sinks may ship an
/// event twice, and a count of events would be reached while others are still on their way.
pub async fn wait_for_distinct_events(
    client: &Client,
    group: &str,
    distinct: usize,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, Vec<(i64, serde_json::Value)>>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = read_group(client, group).await?;
        let ids: std::collections::HashSet<&str> = got
            .values()
            .flatten()
            .filter_map(|(_, e)| e["event"]["event_id"].as_str())
            .collect();
        if ids.len() >= distinct || tokio::time::Instant::now() > deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
