-- Failed logins per person: the server log names the system user as the one who logs people in
-- and the person in its arguments, stored as the event's subject; other services' login events
-- name the person as their user. Only SERVER events and users the enricher resolved count (a
-- CLIENT event's claimed user is never trusted).
SELECT
    coalesce(subject_name, subject_id, user_login, if(source = 'SERVER', coalesce(username, claimed_user_id), NULL)) AS person,
    count() AS failed_logins,
    min(timestamp) AS first,
    max(timestamp) AS last
FROM audit.events
WHERE success = false
  AND ((event_type ILIKE 'authentication%' AND position(event_type, '.') = 0) OR event_type ILIKE '%login%')
GROUP BY person
ORDER BY failed_logins DESC, person
