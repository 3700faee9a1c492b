-- One entity's activity history, newest first: who did what to it, when, with what outcome.
-- Parameters: entity_type (e.g. 'query'), entity_id.
SELECT timestamp, event_type, user_login, user_id, session_id, success, message
FROM audit.entity_activity
WHERE entity_type = {entity_type:String} AND entity_id = {entity_id:String}
ORDER BY timestamp DESC, event_id
LIMIT 1000
