import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Gauge, Histogram, type Registry } from 'prom-client';
import type { Databases } from '../../adapters/db/pg.ts';
import type { EventBus } from '../../core/ports.ts';
import { ENVIRONMENTS, type Environment } from '../../core/principal.ts';
import type { BackupUsagePort } from '../../core/service-ports.ts';
import type { ServiceMigrations, ServiceModule } from '../../platform/module.ts';
import type { BackupRepository } from './domain/backup.repository.ts';
import { BACKUP_CONSUMER, type BackupDeps, BackupService, usageOf } from './domain/backup.service.ts';
import { backupRoutes } from './http/backup.routes.ts';
import { PgBackupRepository } from './repo/backup.repo.ts';
import { backupWorker } from './worker.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Backup: the history of every file version, its own content-addressed store, restores. */
export const backupMigrations: ServiceMigrations = {
  environment: [{ service: 'backup', folder: path.join(here, 'migrations') }],
};

export interface BackupOptions extends Omit<BackupDeps, 'bus' | 'observer' | 'repository'> {
  /** The environment databases, where the backup's history lives (schema `backup`). */
  databases: Databases;
  bus: EventBus;
  /** Run the worker in this process (embedded mode); off when `bantu serve backup` runs it. */
  worker: boolean;
  maxAttempts: number;
  /** How often retention and unreferenced blobs are swept (also once at start). */
  sweepEveryMs: number;
  metrics?: Registry;
}

export interface BackupModule extends ServiceModule {
  service: BackupService;
}

/**
 * The in-process BackupUsagePort (the bytes the backup holds, for the files service's usage),
 * on the backup's own tables. Needs no backup module, so the files service can be built first.
 */
export function backupUsage(databases: Databases): BackupUsagePort {
  return usageOf(new PgBackupRepository(databases));
}

/** Builds the service, its worker (a bus consumer, where it runs), its routes and its metrics. */
export function createBackupService(options: BackupOptions): BackupModule {
  const repository = new PgBackupRepository(options.databases);
  const lag = options.metrics
    ? new Histogram({
        name: 'backup_record_lag_seconds',
        help: 'Time from a file change committing to its version being durably backed up',
        labelNames: ['environment'],
        buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
        registers: [options.metrics],
      })
    : undefined;
  const service = new BackupService({
    ...options,
    repository,
    observer: { recorded: (environment, seconds) => lag?.observe({ environment }, seconds) },
  });
  if (options.metrics) registerBackupGauges(options.metrics, repository, options.bus);

  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> = Promise.resolve();
  const sweep = () => {
    running = service.sweep().catch((error) => options.logger.warn({ err: error }, 'backup sweep failed; retrying later'));
  };
  return {
    name: 'backup',
    service,
    routes: backupRoutes(service),
    consumers: options.worker ? [backupWorker(service, { maxAttempts: options.maxAttempts })] : [],
    start() {
      // Only where the worker runs: one sweeper per deployment, next to the writer it races with.
      if (!options.worker) return;
      sweep();
      timer = setInterval(sweep, options.sweepEveryMs);
      timer.unref();
    },
    async close() {
      if (timer) clearInterval(timer);
      await running;
    },
  };
}

interface Snapshot {
  pending: number;
  deadLetters: number;
  versions: number;
  bytes: number;
  lagSeconds: number;
  failedTries: number;
}

/**
 * Gauges read at scrape time. One snapshot serves every gauge of a scrape (prom-client
 * collects them concurrently); a failing database keeps the last values instead of failing /metrics.
 */
function registerBackupGauges(metrics: Registry, repository: BackupRepository, bus: EventBus): void {
  let last: Record<Environment, Snapshot> = Object.fromEntries(
    ENVIRONMENTS.map((env) => [env, { pending: 0, deadLetters: 0, versions: 0, bytes: 0, lagSeconds: 0, failedTries: 0 }]),
  ) as Record<Environment, Snapshot>;
  let inflight: Promise<Record<Environment, Snapshot>> | undefined;
  const snapshot = () => {
    inflight ??= (async () => {
      try {
        const consumers = await bus.status(BACKUP_CONSUMER);
        const next = { ...last };
        for (const environment of ENVIRONMENTS) {
          const stats = await repository.environmentStats(environment);
          const consumer = consumers.find((c) => c.environment === environment);
          // The age of the oldest change still waiting: how long the backup has owed it.
          const oldest = consumer?.oldestPendingAt ? Date.parse(consumer.oldestPendingAt) : undefined;
          const lagSeconds = oldest !== undefined ? Math.max(0, (Date.now() - oldest) / 1000) : 0;
          next[environment] = {
            pending: consumer?.pending ?? 0,
            deadLetters: consumer?.deadLetters ?? 0,
            versions: stats.versions,
            bytes: stats.bytes,
            lagSeconds,
            failedTries: consumer?.failing?.attempts ?? 0,
          };
        }
        last = next;
      } catch {
        // keep the last values
      }
      return last;
    })().finally(() => setTimeout(() => (inflight = undefined), 500).unref());
    return inflight;
  };
  const gauge = (name: string, help: string, pick: (s: Snapshot) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['environment'],
      registers: [metrics],
      async collect() {
        const all = await snapshot();
        for (const environment of ENVIRONMENTS) this.set({ environment }, pick(all[environment]));
      },
    });
  gauge('backup_lag_events', 'File events not yet backed up', (s) => s.pending);
  gauge('backup_lag_seconds', 'Age of the oldest file change not yet backed up, in seconds (0 when nothing waits)', (s) => s.lagSeconds);
  gauge('backup_versions', 'Version history entries held', (s) => s.versions);
  gauge('backup_bytes', 'Distinct bytes held in the backup store', (s) => s.bytes);
  gauge('backup_dead_letters', 'File events the backup gave up on after its tries', (s) => s.deadLetters);
  gauge(
    'backup_failed_tries',
    'Failed tries so far of the event the backup worker is retrying (0 when none fails). Poison events stop at their max tries; a count that keeps growing is the backup store or database failing, retried until it passes',
    (s) => s.failedTries,
  );
}
