-- Mapped tasks: a task with `map:` expands at run time into instances `<task>[<index>]`, rows of
-- their own (own tries, retries, logs) that name the task they belong to and their item (JSON).
ALTER TABLE flow_task_instances ADD COLUMN map_parent TEXT;
ALTER TABLE flow_task_instances ADD COLUMN map_index BIGINT;
ALTER TABLE flow_task_instances ADD COLUMN map_item TEXT;
