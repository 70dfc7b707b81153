-- The orchestrator's tables. Portable between SQLite and PostgreSQL: times are BIGINT
-- microseconds since the Unix epoch (UTC), flags BIGINT 0/1.
CREATE TABLE flow_dags (
    dag_id TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    hash TEXT NOT NULL,
    schedule TEXT NOT NULL,
    paused BIGINT NOT NULL DEFAULT 0,
    -- The end of the last scheduled data interval created: the scheduler's cursor.
    last_interval_end BIGINT,
    seen_at BIGINT NOT NULL
);

-- Every version of every DAG file a run started with, so the run finishes with it.
CREATE TABLE flow_dag_versions (
    dag_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    source TEXT NOT NULL,
    file TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (dag_id, hash)
);

CREATE TABLE flow_import_errors (
    file TEXT PRIMARY KEY,
    line BIGINT,
    reason TEXT NOT NULL,
    seen_at BIGINT NOT NULL
);

CREATE TABLE flow_dag_runs (
    dag_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    run_type TEXT NOT NULL,
    logical_date BIGINT NOT NULL,
    interval_start BIGINT NOT NULL,
    interval_end BIGINT NOT NULL,
    state TEXT NOT NULL,
    conf TEXT NOT NULL,
    dag_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT,
    PRIMARY KEY (dag_id, run_id)
);
CREATE INDEX flow_dag_runs_by_state ON flow_dag_runs (state);

CREATE TABLE flow_task_instances (
    dag_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    -- Tries started so far (1 while the first runs).
    try_number BIGINT NOT NULL,
    -- The try number after which no retry is left.
    max_tries BIGINT NOT NULL,
    queue TEXT NOT NULL,
    pool TEXT NOT NULL,
    priority BIGINT NOT NULL,
    next_try_at BIGINT,
    started_at BIGINT,
    ended_at BIGINT,
    PRIMARY KEY (dag_id, run_id, task_id)
);
CREATE INDEX flow_task_instances_by_state ON flow_task_instances (state);

-- One row per try: the history a clear keeps.
CREATE TABLE flow_task_tries (
    dag_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    try_number BIGINT NOT NULL,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    reason TEXT,
    log TEXT NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id, try_number)
);
