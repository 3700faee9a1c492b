-- An entity's whole history, oldest first: what was done to it, to anything inside it (a folder's
-- or workspace's contents name it as their CONTAINER), by it (a schedule as ACTOR), and through
-- the entities linked to it (a data flow's schedules and their runs: a schedule's events link it
-- to the data flow it runs, in entity_links). `via` says how each event reached the entity.
-- Both lookups use the tables' sort keys (entity_activity: entity_type, entity_id;
-- entity_links: linked_type, linked_id).
-- Parameters: entity_type (e.g. 'graph', 'directory'), entity_id.
SELECT
    event_id,
    any(timestamp) AS timestamp,
    any(event_type) AS event_type,
    any(catalog_type) AS catalog_type,
    any(user_login) AS user_login,
    any(success) AS success,
    groupUniqArray((entity_type, entity_id, role)) AS via
FROM audit.entity_activity
WHERE (entity_type = {entity_type:String} AND entity_id = {entity_id:String})
   OR (entity_type, entity_id) IN (
        SELECT entity_type, entity_id
        FROM audit.entity_links
        WHERE linked_type = {entity_type:String} AND linked_id = {entity_id:String}
   )
GROUP BY event_id
ORDER BY timestamp, event_id
LIMIT 1000
