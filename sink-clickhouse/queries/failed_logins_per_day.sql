-- Failed logins per day: unsuccessful authentication events of the server audit log
-- (authenticationFailure / authenticationSuccess with success = false) and of any service that
-- reports logins as event types containing 'login' or 'authentication'.
SELECT toDate(timestamp) AS day, count() AS failed_logins, uniqExact(coalesce(user_id, claimed_user_id, username)) AS users
FROM audit.events
WHERE success = false
  AND (event_type ILIKE '%authentication%' OR event_type ILIKE '%login%')
GROUP BY day
ORDER BY day
