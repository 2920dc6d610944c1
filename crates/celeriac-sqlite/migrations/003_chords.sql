-- celeriac SQLite schema, version 3: chords and saved groups.

-- A chord's join state: how many header parts it expects (NULL until known, or after it
-- failed), who claimed the right to fire its body, and when it was fired.
CREATE TABLE chords (
    group_id   TEXT PRIMARY KEY,
    size       INTEGER,
    claim      TEXT,
    done_at    REAL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- Finished header parts, once per (task id, position); `ord` is the group index
-- (9223372036854775807 when the part has none), so reading by `ord` gives header order.
CREATE TABLE chord_parts (
    group_id TEXT    NOT NULL,
    ord      INTEGER NOT NULL,
    task_id  TEXT    NOT NULL,
    state    TEXT    NOT NULL,
    result   BLOB    NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (group_id, task_id, ord)
) WITHOUT ROWID;

-- Saved groups (GroupResult.save()): Celery's `{"result": [[gid, null], [...]]}` record.
CREATE TABLE groups (
    group_id   TEXT PRIMARY KEY,
    record     BLOB NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
