import type { Logger } from 'pino';
import type { OutboxBus } from './adapters/bus/outbox.ts';
import type { Leadership } from './adapters/db/leader.ts';
import type { Databases } from './adapters/db/pg.ts';
import { ALL_MIGRATIONS, filesDeps } from './app.ts';
import type { Config } from './core/config.ts';
import { moduleWork, runLed } from './platform/led.ts';
import { registerConsumers } from './platform/module.ts';
import { openPlatform } from './platform/platform.ts';
import type { BackupService } from './services/backup/domain/backup.service.ts';
import { createBackupService } from './services/backup/plugin.ts';
import { createFilesService } from './services/files/plugin.ts';

/**
 * The composition root of one module alone: `bantu serve backup` (the worker, distributed
 * mode) and the `bantu backup verify|restore|retry-dead-letters` tools. The same platform as
 * `bantu start`; only the module list differs.
 *
 * With DATABASE_URL it shares the database with the running services; it needs the same
 * blob stores (the same folders, or the same S3_BUCKET and S3_BACKUP_BUCKET). Without it, it starts the data dir's embedded
 * PostgreSQL itself, which only works while no server holds that data dir (the lock says so).
 */
export interface BackupProcess {
  databases: Databases;
  bus: OutboxBus;
  backup: BackupService;
  /** With the worker: whether this process leads `backup` (runs the worker and its sweep) or stands by. */
  leader?: Leadership;
  close(): Promise<void>;
}

export async function openBackupProcess(config: Config, logger: Logger, options: { worker: boolean }): Promise<BackupProcess> {
  // The same migrations as `bantu start`, under the same lock: whichever process starts first applies them.
  const platform = await openPlatform(config, logger, { migrations: ALL_MIGRATIONS, exclusiveDataDir: false });
  try {
    // Restores make versions and events like any write, through the files port. In-process
    // for now: the backup process mounts the files domain (no routes, no sweep) until the
    // port has its HTTP driver through the registry (distributed mode).
    const files = createFilesService(filesDeps(platform));
    const backup = createBackupService({
      databases: platform.databases,
      sources: platform.blobs,
      store: platform.backups,
      bus: platform.bus,
      files: files.port,
      worker: options.worker,
      maxAttempts: config.backupMaxAttempts,
      sweepEveryMs: config.backupSweepMinutes * 60_000,
      logger: logger.child({ component: 'backup' }),
    });
    let leader: Leadership | undefined;
    if (options.worker) {
      // However many of these processes run, one runs the worker; the others stand by to take over.
      registerConsumers(platform.bus, [backup], { led: true });
      await platform.bus.start();
      leader = runLed(platform, 'backup', moduleWork(platform.bus, backup));
      await leader.decided;
    }
    return { databases: platform.databases, bus: platform.bus, backup: backup.service, leader, close: () => platform.close() };
  } catch (error) {
    await platform.close();
    throw error;
  }
}
