-- celeriac SQLite schema, version 5: exchange types, for queues bound to topic and fanout
-- exchanges (Celery's task_queues). An exchange without a row here is direct: its
-- bindings match the routing key exactly.
CREATE TABLE exchanges (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL
) WITHOUT ROWID;
