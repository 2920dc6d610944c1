-- celeriac SQLite schema, version 4: an index for "is anything ready, and when is the
-- next delayed message due" (the look before each claim) and for queue depths.
--
-- Without it both scan every waiting row of the queue: with 20,000 messages queued, the
-- look before a claim took 8 ms. The claim itself keeps using `messages_ready` (priority,
-- then arrival order), named with INDEXED BY so the planner cannot pick this one.
CREATE INDEX messages_visible ON messages (queue, visible_at) WHERE claimed_by IS NULL;
