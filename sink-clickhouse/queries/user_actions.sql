-- One user's actions in a time window (served by the by_user projection).
-- Parameters: user_id, from, to (e.g. '2024-03-01 00:00:00').
SELECT timestamp, event_type, service, session_id, success, message, entities
FROM audit.events
WHERE user_id = {user_id:String}
  AND timestamp >= {from:DateTime64(6)} AND timestamp < {to:DateTime64(6)}
ORDER BY timestamp
