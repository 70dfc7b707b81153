-- What the leading scheduler computes for others to read: the desired worker count per queue
-- (the autoscaling signal), and which runs it reported as past their deadline.
CREATE TABLE flow_autoscale (
    queue TEXT PRIMARY KEY,
    desired BIGINT NOT NULL,
    queued BIGINT NOT NULL,
    running BIGINT NOT NULL,
    workers BIGINT NOT NULL,
    avg_task_ms BIGINT,
    oldest_queued_ms BIGINT,
    computed_at BIGINT NOT NULL
);

ALTER TABLE flow_dag_runs ADD COLUMN deadline_missed_at BIGINT;
