-- Table-triggered DAGs (`schedule: {tables: [...]}`): per DAG and table, the table version its
-- last run covered (-1: the table had no commit); a commit past it starts the next run.
CREATE TABLE flow_table_cursors (
    dag_id TEXT NOT NULL,
    table_name TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (dag_id, table_name)
);

-- A table-triggered run's input versions (JSON: table -> {version, previous}).
ALTER TABLE flow_dag_runs ADD COLUMN inputs TEXT;
