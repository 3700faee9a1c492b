-- Events dropped by rules, per event type, group and rule. Dropped events never reach this
-- database: the enricher counts them in its metrics, and ClickHouse reads them live from its
-- Prometheus endpoint. Parameter: metrics_url (the enricher's, default
-- 'http://127.0.0.1:9101/metrics'); with several enrichers, add their figures.
SELECT
    extract(line, 'event_type="([^"]*)"') AS event_type,
    extract(line, 'group="([^"]*)"') AS group_name,
    extract(line, 'rule="([^"]*)"') AS rule,
    toUInt64(toFloat64OrZero(arrayElement(splitByChar(' ', line), -1))) AS dropped
FROM url({metrics_url:String}, 'LineAsString')
WHERE startsWith(line, 'audit_enricher_events_dropped_total{')
ORDER BY dropped DESC, event_type, group_name
