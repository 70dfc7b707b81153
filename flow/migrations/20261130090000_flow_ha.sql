-- Scale-out: one leading scheduler among many (a lease with a fencing epoch), remote workers
-- that claim queued task instances, and their liveness. Liveness is a beat counter each member
-- increments; observers judge it by their own clock, so machines' clocks need not agree.

-- The single scheduler lease. `epoch` grows by one at each change of leader; every state change
-- the leader makes checks it inside its transaction, so a former leader cannot write.
CREATE TABLE flow_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    beats BIGINT NOT NULL,
    acquired_at BIGINT
);
INSERT INTO flow_lease (name, holder, epoch, beats) VALUES ('scheduler', '', 0, 0);

CREATE TABLE flow_schedulers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    beats BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE flow_workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    queues TEXT NOT NULL,
    slots BIGINT NOT NULL,
    -- active, draining, stopped or lost (stopped heartbeating; its tries were failed).
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    beats BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- The worker running an instance's current try (NULL: the scheduler's local executor).
ALTER TABLE flow_task_instances ADD COLUMN worker TEXT;
ALTER TABLE flow_task_instances ADD COLUMN queued_at BIGINT;
CREATE INDEX flow_task_instances_queued ON flow_task_instances (state, queue, priority);
