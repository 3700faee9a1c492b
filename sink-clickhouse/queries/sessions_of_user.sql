-- A user's sessions: when each started, from where, how long it was active and what it did
-- (served by the by_user projection).
-- Parameter: user_id.
SELECT session_id, any(session_started_at) AS started_at, any(session_ip) AS ip,
       min(timestamp) AS first_event, max(timestamp) AS last_event, count() AS events,
       countIf(success = false) AS failures
FROM audit.events
WHERE user_id = {user_id:String} AND session_id IS NOT NULL
GROUP BY session_id
ORDER BY first_event DESC
