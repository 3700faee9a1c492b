-- The most frequent event types of each group (an event counts for every group of its user,
-- transitive memberships included).
SELECT group_name, event_type, count() AS events
FROM audit.events
ARRAY JOIN group_names AS group_name
GROUP BY group_name, event_type
ORDER BY group_name, events DESC
LIMIT 5 BY group_name
