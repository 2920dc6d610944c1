-- celeriac SQLite schema, version 6: beat (periodic tasks). One leader lease per
-- schedule, with a fencing token that grows each time it changes hands, and the due time
-- of each entry's last sent run (µs since the Unix epoch).
CREATE TABLE beat_leases (
    schedule TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE beat_runs (
    schedule TEXT NOT NULL,
    entry TEXT NOT NULL,
    last_due INTEGER NOT NULL,
    PRIMARY KEY (schedule, entry)
) WITHOUT ROWID;
