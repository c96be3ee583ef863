-- The notifications relay became an ephemeral consumer (each instance relays to its own
-- sockets from its start on, no durable cursor). Its old cursor would hold back the pruning
-- of the outbox's history forever.
delete from bus.consumer_cursor where consumer = 'notifications';
