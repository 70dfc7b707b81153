-- Decisions on approval tasks: one per try (a cleared task asks again).
CREATE TABLE flow_approvals (
    dag_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    try_number BIGINT NOT NULL,
    decision TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    comment TEXT NOT NULL,
    decided_at BIGINT NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id, try_number)
);
