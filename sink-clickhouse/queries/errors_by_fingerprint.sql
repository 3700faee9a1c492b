-- Errors grouped by fingerprint: one row per distinct error (the logger hashes the stack's frames
-- without line and column numbers), with how often, for how many users, first and last seen,
-- and one example message and stack trace. CLIENT events count the resolved user only.
SELECT
    error_fingerprint AS fingerprint,
    count() AS occurrences,
    uniqExact(user_id) AS users,
    min(timestamp) AS first_seen,
    max(timestamp) AS last_seen,
    any(error_message) AS example_message,
    any(error_stack_trace) AS example_stack_trace
FROM audit.events
WHERE error_fingerprint IS NOT NULL
GROUP BY fingerprint
ORDER BY occurrences DESC, fingerprint
