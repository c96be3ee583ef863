import { FILE_EVENT_TYPES } from '../../core/events.ts';
import type { EventBus } from '../../core/ports.ts';
import { BACKUP_CONSUMER, type BackupService } from './domain/backup.service.ts';

/**
 * The backup worker: a durable consumer of every File_* event of every tenant and environment.
 * The bus delivers at least once, in commit order per file, and moves its cursor only past
 * events whose handler returned; `record` returns only once the version is durable and
 * recorded. A handler that keeps failing (the bytes are gone, or are not the bytes the event
 * names) is retried with backoff, then set aside as a dead letter, and later events go on.
 * A backlog is handled a read at a time (`recordBatch`): one commit for many versions.
 */
export function registerBackupWorker(bus: EventBus, backup: BackupService, options: { maxAttempts: number }): void {
  bus.consumeBatch(BACKUP_CONSUMER, (events) => backup.recordBatch(events), { types: FILE_EVENT_TYPES, maxAttempts: options.maxAttempts });
}
