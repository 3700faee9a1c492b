-- Errors by event type: failed events and 'error' events, with their most common error codes.
SELECT event_type, count() AS errors, topK(3)(error_code) AS top_error_codes, max(timestamp) AS last_seen
FROM audit.events
WHERE success = false OR event_type = 'error'
GROUP BY event_type
ORDER BY errors DESC
