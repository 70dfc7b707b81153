-- The transactional outbox of the orchestrator's event stream: every DAG-run and task-instance
-- state change adds a row in the transaction that makes it; the leading scheduler publishes the
-- rows to `weir.flow.events` in `seq` order and deletes them. `seq` comes from flow_counters,
-- whose row every such transaction updates last, so sequence order is commit order.
CREATE TABLE flow_outbox (
    seq BIGINT PRIMARY KEY,
    -- run, task or artifact
    kind TEXT NOT NULL,
    dag_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_id TEXT,
    try_number BIGINT,
    state TEXT NOT NULL,
    logical_date BIGINT,
    at BIGINT NOT NULL,
    -- JSON: a failure's reason, an artifact's files.
    detail TEXT
);

CREATE TABLE flow_counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO flow_counters (name, value) VALUES ('events', 0);
