import fs from 'node:fs';
import type http from 'node:http';
import type https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import type { Logger } from 'pino';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { DiskBlobStore } from './adapters/blob/disk.ts';
import { OutboxBus } from './adapters/bus/outbox.ts';
import { MemoryCounterStore } from './adapters/cache/memory.ts';
import { RedisCounterStore } from './adapters/cache/redis.ts';
import { type EmbeddedDatabase, startEmbeddedPostgres } from './adapters/db/embedded.ts';
import { type Databases, ENVIRONMENTS, type MigrationSet, migrate, openDatabases } from './adapters/db/pg.ts';
import { dataPath, lockDataDir, readOrCreateSecret, writeSecretFile } from './adapters/local/data-dir.ts';
import { FileMailer } from './adapters/mail/files.ts';
import { SmtpMailer } from './adapters/mail/smtp.ts';
import type { Config } from './core/config.ts';
import type { Mailer } from './core/ports.ts';
import { operatorVerifier } from './gateway/auth.ts';
import type { ReadinessCheck } from './gateway/operations.ts';
import { createGateway, createHttpRejector } from './gateway/server.ts';
import { loadTls } from './gateway/tls.ts';
import type { BackupService } from './services/backup/domain/backup.service.ts';
import { backupMigrations, createBackupService } from './services/backup/plugin.ts';
import type { FilesService } from './services/files/domain/files.service.ts';
import { createFilesService, filesMigrations } from './services/files/plugin.ts';
import type { CreatedTenant } from './services/identity/domain/tenants.service.ts';
import { createIdentityService, type IdentityService, identityMigrations } from './services/identity/plugin.ts';
import { createNotificationsService } from './services/notifications/plugin.ts';

/**
 * The composition root: builds every adapter and service from a Config and wires them
 * together explicitly. Nothing here reads process.env or listens at import time.
 */
const here = path.dirname(fileURLToPath(import.meta.url));
export const VERSION: string = JSON.parse(fs.readFileSync(path.join(here, '..', 'package.json'), 'utf8')).version;

/** Migrations of each environment database, in the order they must run. */
export const environmentMigrations: MigrationSet[] = [
  { service: 'platform', folder: path.join(here, 'adapters', 'db', 'migrations') },
  { service: 'bus', folder: path.join(here, 'adapters', 'bus', 'migrations') },
  ...identityMigrations.environment,
  ...filesMigrations.environment,
  ...backupMigrations.environment,
];
export const controlMigrations: MigrationSet[] = [...identityMigrations.control];

export interface StartedApp {
  /** Base URL of the HTTPS gateway, e.g. https://127.0.0.1:8443 */
  url: string;
  port: number;
  httpPort?: number;
  tlsFingerprint: string;
  tlsGenerated: boolean;
  /** Set when the operator token was generated during this start (print it once). */
  generatedOperatorToken?: string;
  /** Set when the default tenant was created during this start (print its keys once). */
  createdDefaultTenant?: CreatedTenant;
  secretsDir: string;
}

export interface App {
  start(): Promise<StartedApp>;
  close(): Promise<void>;
  /** Available after start; for tests and the CLI. */
  readonly gateway: FastifyInstance;
  readonly databases: Databases;
  readonly bus: OutboxBus;
  readonly identity: IdentityService;
  readonly backup: BackupService;
  readonly files: FilesService;
}

export function createApp(config: Config, logger: Logger): App {
  const closers: Array<() => Promise<void>> = [];
  let gateway: FastifyInstance | undefined;
  let databases: Databases | undefined;
  let bus: OutboxBus | undefined;
  let identityService: IdentityService | undefined;
  let backupService: BackupService | undefined;
  let filesService: FilesService | undefined;
  let closing: Promise<void> | undefined;

  async function start(): Promise<StartedApp> {
    const release = await lockDataDir(config.dataDir);
    closers.push(release);
    const secretsDir = dataPath(config.dataDir, 'secrets');
    // Before anything starts: an unusable configured certificate fails the start at once.
    const tls = await loadTls({ dataDir: config.dataDir, certFile: config.tls?.certFile, keyFile: config.tls?.keyFile, host: config.host });
    // Rate-limit counters: in memory for one process, in Redis when several share the limits.
    // Also before anything starts: a Redis that cannot be reached fails the start at once.
    const redisCounters = config.redisUrl ? await RedisCounterStore.connect(config.redisUrl, { prefix: config.redisPrefix, logger: logger.child({ component: 'redis' }) }) : undefined;
    if (redisCounters) closers.push(() => redisCounters.close());

    let baseUrl = config.databaseUrl;
    if (!baseUrl) {
      const embedded: EmbeddedDatabase = await startEmbeddedPostgres(config.dataDir, logger);
      closers.push(() => embedded.stop());
      baseUrl = embedded.url.replace(/\/postgres$/, '/bantu');
    }
    databases = await openDatabases(baseUrl);
    const dbs = databases;
    closers.push(() => dbs.close());
    const applied = [
      ...(await migrate(dbs.control, controlMigrations)),
      ...(await Promise.all(ENVIRONMENTS.map((env) => migrate(dbs.environments[env], environmentMigrations)))).flat(),
    ];
    if (applied.length > 0) logger.info({ applied }, 'migrations applied');

    const operator = config.operatorToken
      ? { value: config.operatorToken, created: false }
      : await readOrCreateSecret(path.join(secretsDir, 'operator-token'), () => `op_${randomToken()}`);

    bus = new OutboxBus(dbs, logger.child({ component: 'bus' }));
    // One blob root per environment: live and test never share storage.
    const blobs = {
      live: await DiskBlobStore.open(dataPath(config.dataDir, 'blobs', 'live')),
      test: await DiskBlobStore.open(dataPath(config.dataDir, 'blobs', 'test')),
    };
    const files = createFilesService({
      databases: dbs,
      blobs,
      bus,
      limits: { maxUploadBytes: config.maxUploadBytes, tenantQuotaBytes: config.tenantQuotaBytes ?? null },
      logger: logger.child({ component: 'files' }),
      // Usage reports what the backup holds, from the backup service's own status (built below:
      // it needs the files service for restores; both exist before the gateway serves a request).
      backupBytes: async (principal) => {
        if (!backupService) throw new Error('the backup service is not built yet');
        return (await backupService.status(principal)).bytes;
      },
    });
    filesService = files.service;
    // Seals the JWT signing keys in the databases; losing it only means new keys (users log in again).
    const secretKey = config.secretKey ?? (await readOrCreateSecret(path.join(secretsDir, 'secret-key'))).value;
    const mailer: Mailer = config.smtpUrl
      ? new SmtpMailer(config.smtpUrl, config.mailFrom, logger.child({ component: 'mail' }))
      : new FileMailer(dataPath(config.dataDir, 'mail'), config.mailFrom, logger.child({ component: 'mail' }));
    closers.push(() => mailer.close());
    // Links in mails and the tokens' issuer: BANTU_PUBLIC_URL, else the gateway's own URL once it listens.
    let gatewayUrl = `https://${config.host}:${config.port}`;
    const identity = createIdentityService({
      databases: dbs,
      secretKey,
      mailer,
      counters: redisCounters ?? new MemoryCounterStore(),
      publicUrl: () => config.publicUrl ?? gatewayUrl,
      logger,
    });
    await identity.start();
    closers.push(async () => identity.close());
    identityService = identity;

    let createdDefaultTenant: CreatedTenant | undefined;
    if ((await identity.tenants.list(1)).rows.length === 0) {
      createdDefaultTenant = await identity.tenants.create('default');
      await writeSecretFile(path.join(secretsDir, 'default-tenant.json'), `${JSON.stringify(createdDefaultTenant, null, 2)}\n`);
    }

    const metrics = new Registry();
    collectDefaultMetrics({ register: metrics });
    const checks = new Map<string, ReadinessCheck>([
      ['database', async () => void (await sql`select 1`.execute(dbs.control))],
      ['database_live', async () => void (await sql`select 1`.execute(dbs.environments.live))],
      ['database_test', async () => void (await sql`select 1`.execute(dbs.environments.test))],
    ]);
    if (redisCounters) checks.set('redis', () => redisCounters.ping());

    // The backup store has its own root (BANTU_BACKUP_DIR, so it can live on another disk), one per environment.
    const backupStores = {
      live: await DiskBlobStore.open(path.join(config.backupDir, 'live')),
      test: await DiskBlobStore.open(path.join(config.backupDir, 'test')),
    };
    const backup = createBackupService({
      databases: dbs,
      sources: blobs,
      store: backupStores,
      bus,
      files: files.service,
      worker: config.backupWorker,
      maxAttempts: config.backupMaxAttempts,
      sweepEveryMs: config.backupSweepMinutes * 60_000,
      metrics,
      logger: logger.child({ component: 'backup' }),
    });
    backupService = backup.service;

    gateway = await createGateway({
      logger,
      tls,
      corsOrigins: config.corsOrigins,
      maxUploadBytes: config.maxUploadBytes,
      metrics,
      checks,
      // Keys and user tokens first: the hot paths never pay for the operator check (a hash).
      verifiers: [...identity.verifiers, operatorVerifier(operator.value)],
      routes: [...backup.routes, ...files.routes],
      plugins: [...identity.routes],
      rootRoutes: [...identity.rootRoutes],
      version: VERSION,
    });
    const gw = gateway;
    const notifications = createNotificationsService({
      bus,
      verifiers: identity.verifiers,
      logger: logger.child({ component: 'notifications' }),
      metrics,
      corsOrigins: config.corsOrigins,
      authTimeoutMs: config.socketAuthTimeoutMs,
      recheckMs: config.socketRecheckMs,
    });
    notifications.attach(gw.server as https.Server);
    await bus.start();
    const busRef = bus;
    closers.push(() => busRef.close());
    // Replayable history is kept for the retention, then pruned once every consumer has passed it.
    const prune = setInterval(() => {
      busRef.prune(config.eventRetentionHours).catch((error) => logger.warn({ err: error }, 'outbox prune failed'));
    }, 3600_000);
    prune.unref();
    closers.push(async () => clearInterval(prune));

    await gw.listen({ host: config.host, port: config.port });
    closers.push(() => gw.close());
    // Sockets first: an open WebSocket would otherwise hold the HTTPS server's close.
    closers.push(() => notifications.close());
    files.start();
    closers.push(() => files.close());
    backup.start();
    closers.push(() => backup.close());
    const port = (gw.server.address() as AddressInfo).port;

    let httpPort: number | undefined;
    if (config.httpPort !== undefined) {
      const rejector: http.Server = createHttpRejector(logger);
      await new Promise<void>((resolve, reject) => {
        rejector.once('error', reject);
        rejector.listen(config.httpPort, config.host, () => resolve());
      });
      httpPort = (rejector.address() as AddressInfo).port;
      closers.push(() => new Promise<void>((resolve) => rejector.close(() => resolve())));
    }

    const hostForUrl = config.host.includes(':') ? `[${config.host}]` : config.host;
    gatewayUrl = `https://${hostForUrl === '0.0.0.0' ? '127.0.0.1' : hostForUrl}:${port}`;
    return {
      url: gatewayUrl,
      port,
      httpPort,
      tlsFingerprint: tls.fingerprint,
      tlsGenerated: tls.generated,
      generatedOperatorToken: operator.created ? operator.value : undefined,
      createdDefaultTenant,
      secretsDir,
    };
  }

  /** Closes in reverse order of opening: stop accepting, drain, then stop the database. */
  function close(): Promise<void> {
    closing ??= (async () => {
      for (const closer of closers.reverse()) {
        try {
          await closer();
        } catch (error) {
          logger.error({ err: error }, 'error while shutting down');
        }
      }
    })();
    return closing;
  }

  return {
    start,
    close,
    get gateway() {
      if (!gateway) throw new Error('app not started');
      return gateway;
    },
    get databases() {
      if (!databases) throw new Error('app not started');
      return databases;
    },
    get bus() {
      if (!bus) throw new Error('app not started');
      return bus;
    },
    get identity() {
      if (!identityService) throw new Error('app not started');
      return identityService;
    },
    get backup() {
      if (!backupService) throw new Error('app not started');
      return backupService;
    },
    get files() {
      if (!filesService) throw new Error('app not started');
      return filesService;
    },
  };
}

function randomToken(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64url');
}
