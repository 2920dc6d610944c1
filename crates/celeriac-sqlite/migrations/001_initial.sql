-- celeriac SQLite schema, version 1.

-- Messages waiting in or taken from a queue. `id` orders them (FIFO within a priority);
-- `visible_at` delays delivery; `claimed_by` names the consumer holding an unsettled one.
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY,
    queue       TEXT    NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    visible_at  REAL    NOT NULL,
    claimed_by  TEXT,
    claimed_at  REAL,
    redelivered INTEGER NOT NULL DEFAULT 0,
    tag         TEXT    NOT NULL UNIQUE,
    envelope    BLOB    NOT NULL
);
CREATE INDEX messages_ready ON messages (queue, priority, id) WHERE claimed_by IS NULL;
CREATE INDEX messages_claimed ON messages (claimed_by) WHERE claimed_by IS NOT NULL;

-- Queues declared by workers and clients (so empty queues are still listed).
CREATE TABLE queues (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;

-- Direct-exchange bindings: a message published to `exchange` with `routing_key` goes to `queue`.
CREATE TABLE bindings (
    exchange    TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    queue       TEXT NOT NULL,
    PRIMARY KEY (exchange, routing_key, queue)
) WITHOUT ROWID;

-- Consuming processes and their last heartbeat; the messages of a consumer that stops
-- beating go back to their queues.
CREATE TABLE consumers (
    id        TEXT PRIMARY KEY,
    pid       INTEGER NOT NULL,
    hostname  TEXT    NOT NULL,
    started   REAL    NOT NULL,
    last_seen REAL    NOT NULL
) WITHOUT ROWID;

-- Task results: Celery's task-meta record as JSON, with its state for the
-- never-overwrite-SUCCESS rule and an expiry time.
CREATE TABLE results (
    task_id    TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    meta       BLOB NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX results_expiry ON results (expires_at) WHERE expires_at IS NOT NULL;
