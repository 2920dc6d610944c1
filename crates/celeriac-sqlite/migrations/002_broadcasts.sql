-- celeriac SQLite schema, version 2: fanout exchanges (remote control, events).

-- A broadcast is read by every subscriber of its exchange that was listening when it was
-- published (subscribers remember the last id they saw); old rows are deleted.
CREATE TABLE broadcasts (
    id       INTEGER PRIMARY KEY,
    exchange TEXT NOT NULL,
    envelope BLOB NOT NULL,
    created  REAL NOT NULL
);
CREATE INDEX broadcasts_exchange ON broadcasts (exchange, id);
