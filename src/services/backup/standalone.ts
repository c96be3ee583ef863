import path from 'node:path';
import type { Logger } from 'pino';
import { DiskBlobStore } from '../../adapters/blob/disk.ts';
import { OutboxBus } from '../../adapters/bus/outbox.ts';
import { startEmbeddedPostgres } from '../../adapters/db/embedded.ts';
import { type Databases, ENVIRONMENTS, migrate, openDatabases } from '../../adapters/db/pg.ts';
import { dataPath, lockDataDir } from '../../adapters/local/data-dir.ts';
import { controlMigrations, environmentMigrations } from '../../app.ts';
import type { Config } from '../../core/config.ts';
import type { Environment } from '../../core/principal.ts';
import { FilesService } from '../files/domain/files.service.ts';
import type { BackupService } from './domain/backup.service.ts';
import { createBackupService } from './plugin.ts';

/**
 * The backup service outside the all-in-one app: `bantu serve backup` (the worker alone,
 * distributed mode) and the `bantu backup verify|restore` tools.
 *
 * With DATABASE_URL it shares the database with the running services; it needs the same
 * data dir for the files blob roots (until S3 exists). Without it, it starts the data dir's
 * embedded PostgreSQL itself, which only works while no server holds that data dir (the
 * data dir lock says so).
 */
export interface BackupRuntime {
  databases: Databases;
  bus: OutboxBus;
  backup: BackupService;
  close(): Promise<void>;
}

export async function openBackupRuntime(config: Config, logger: Logger, options: { worker: boolean }): Promise<BackupRuntime> {
  const closers: Array<() => Promise<void>> = [];
  const close = async () => {
    for (const closer of closers.reverse()) {
      try {
        await closer();
      } catch (error) {
        logger.error({ err: error }, 'error while shutting down');
      }
    }
  };
  try {
    let baseUrl = config.databaseUrl;
    if (!baseUrl) {
      closers.push(await lockDataDir(config.dataDir));
      const embedded = await startEmbeddedPostgres(config.dataDir, logger);
      closers.push(() => embedded.stop());
      baseUrl = embedded.url.replace(/\/postgres$/, '/bantu');
    }
    const databases = await openDatabases(baseUrl);
    closers.push(() => databases.close());
    // The same migrations as the app, under the same lock: whichever process starts first applies them.
    await migrate(databases.control, controlMigrations);
    await Promise.all(ENVIRONMENTS.map((env) => migrate(databases.environments[env], environmentMigrations)));

    const bus = new OutboxBus(databases, logger.child({ component: 'bus' }));
    const openStores = async (root: (env: Environment) => string) => ({
      live: await DiskBlobStore.open(root('live')),
      test: await DiskBlobStore.open(root('test')),
    });
    const sources = await openStores((env) => dataPath(config.dataDir, 'blobs', env));
    const store = await openStores((env) => path.join(config.backupDir, env));
    // Restores go through the files service, so they make versions and events like any write.
    const files = new FilesService({
      databases,
      blobs: sources,
      bus,
      limits: { maxUploadBytes: config.maxUploadBytes, tenantQuotaBytes: config.tenantQuotaBytes ?? null },
      logger: logger.child({ component: 'files' }),
    });
    const module = createBackupService({
      databases,
      sources,
      store,
      bus,
      files,
      worker: options.worker,
      maxAttempts: config.backupMaxAttempts,
      sweepEveryMs: config.backupSweepMinutes * 60_000,
      logger: logger.child({ component: 'backup' }),
    });
    if (options.worker) {
      await bus.start();
      closers.push(() => bus.close());
      module.start();
      closers.push(() => module.close());
    }
    return { databases, bus, backup: module.service, close };
  } catch (error) {
    await close();
    throw error;
  }
}
