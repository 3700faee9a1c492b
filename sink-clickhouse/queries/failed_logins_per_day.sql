-- Failed logins per day: unsuccessful authentication events of the server audit log
-- (authenticationFailure / authenticationSuccess with success = false) and of any service that
-- reports logins as event types containing 'login' or 'authentication'. A CLIENT event's claimed
-- user is never counted: a login's subject (the person named in its arguments), else the user the
-- enricher resolved (or a SERVER event's own).
SELECT toDate(timestamp) AS day, count() AS failed_logins, uniqExact(coalesce(subject_name, subject_id, user_id, if(source = 'SERVER', coalesce(claimed_user_id, username), NULL))) AS people
FROM audit.events
WHERE success = false
  AND (event_type ILIKE '%authentication%' OR event_type ILIKE '%login%')
GROUP BY day
ORDER BY day
