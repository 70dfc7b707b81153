-- The lake table versions a SQL task's try read (JSON: table -> version); a rerun of the task
-- reads the versions its first try that read any did, unless cleared with --latest, which moves
-- `inputs_after` to the try number then (only later tries' versions count).
ALTER TABLE flow_task_tries ADD COLUMN inputs TEXT;
ALTER TABLE flow_task_instances ADD COLUMN inputs_after BIGINT NOT NULL DEFAULT 0;
