import { FILE_EVENT_TYPES } from '../../core/events.ts';
import type { BusConsumer } from '../../platform/module.ts';
import { BACKUP_CONSUMER, type BackupService } from './domain/backup.service.ts';

/**
 * The backup worker: a durable consumer of every File_* event of every tenant and environment.
 * The bus delivers at least once, in commit order per file, and moves its cursor only past
 * events whose handler returned; `record` returns only once the version is durable and
 * recorded. A poison event (the bytes are gone, or are not the bytes the event names) is
 * retried with backoff, then set aside as a dead letter, and later events go on
 * (`bantu backup retry-dead-letters` hands them over again once the cause is fixed). Any other
 * failure is the backup's own store or database: the event is retried, with backoff capped
 * at 30 s, for as long as that lasts, later events waiting behind it; never set aside, so an
 * outage of the backup disk delays versions but loses none.
 * A backlog is handled a read at a time (`recordBatch`): one commit for many versions.
 */
export function backupWorker(backup: BackupService, options: { maxAttempts: number }): BusConsumer {
  return {
    name: BACKUP_CONSUMER,
    batch: true,
    handle: (events) => backup.recordBatch(events),
    options: { types: FILE_EVENT_TYPES, maxAttempts: options.maxAttempts, deadLetter: 'poison-only' },
  };
}
