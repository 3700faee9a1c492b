-- Events dropped by rules, per minute, rule, event type and group, from the enricher's drop
-- summaries (table rule_drops, kept across restarts). A batch the enricher did again after a
-- crash is summed again; each dropped event is counted once here by its raw partition and
-- offset. Parameters: from, to (DateTime, the dropped events' time).
SELECT
    minute,
    rule,
    event_type,
    group_name,
    count() AS dropped,
    min(first_event_time) AS first_event_time,
    max(last_event_time) AS last_event_time
FROM
(
    SELECT
        raw_partition,
        raw_offset,
        any(d.minute) AS minute,
        any(d.rule) AS rule,
        any(d.event_type) AS event_type,
        any(d.group_name) AS group_name,
        min(d.first_event_time) AS first_event_time,
        max(d.last_event_time) AS last_event_time
    FROM audit.rule_drops AS d
    ARRAY JOIN d.raw_offsets AS raw_offset
    WHERE d.minute >= toStartOfMinute({from:DateTime}) AND d.minute <= {to:DateTime}
    GROUP BY d.raw_partition AS raw_partition, raw_offset
)
GROUP BY minute, rule, event_type, group_name
ORDER BY minute, dropped DESC, rule, event_type, group_name
