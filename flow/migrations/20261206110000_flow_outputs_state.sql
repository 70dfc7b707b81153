-- What a try handed on: the JSON object a script wrote to $WEIR_OUTPUT (a SQL task: the view,
-- its version and rows), read by downstream templates as {{ tasks.<id>.output.<key> }}.
ALTER TABLE flow_task_tries ADD COLUMN output TEXT;

-- A task's state kept across tries and runs ($WEIR_STATE, `weir dags state`).
CREATE TABLE flow_task_state (
    dag_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (dag_id, task_id)
);
