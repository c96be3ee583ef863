import fs from 'node:fs';
import type http from 'node:http';
import type https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { DiskBlobStore } from './adapters/blob/disk.ts';
import type { Leadership } from './adapters/db/leader.ts';
import type { Databases } from './adapters/db/pg.ts';
import { readOrCreateSecret, writeSecretFile } from './adapters/local/data-dir.ts';
import type { Config } from './core/config.ts';
import type { AdminNoticePort, AuditPort, FilesExportPort, UserDirectoryPort } from './core/service-ports.ts';
import { operatorVerifier } from './gateway/auth.ts';
import { routesOf } from './gateway/routes.ts';
import { createGateway, createHttpRejector } from './gateway/server.ts';
import { loadTls, type TlsMaterial } from './gateway/tls.ts';
import { moduleWork, periodicWork, runLed } from './platform/led.ts';
import { registerConsumers } from './platform/module.ts';
import { openPlatform, type Platform, type PlatformBus } from './platform/platform.ts';
import { natsRelayWork } from './platform/relay.ts';
import type { BackupService } from './services/backup/domain/backup.service.ts';
import { backupMigrations, backupUsage, createBackupService } from './services/backup/plugin.ts';
import type { ExportsService } from './services/exports/domain/exports.service.ts';
import { createExportsService, exportsMigrations } from './services/exports/plugin.ts';
import type { FilesDeps, FilesService } from './services/files/domain/files.service.ts';
import { createFilesService, filesMigrations } from './services/files/plugin.ts';
import type { CreatedTenant } from './services/identity/domain/tenants.service.ts';
import { createIdentityService, type IdentityService, identityMigrations } from './services/identity/plugin.ts';
import { createNotificationsService } from './services/notifications/plugin.ts';
import { createWebhooksService, type WebhooksOptions, webhooksMigrations } from './services/webhooks/plugin.ts';

/**
 * The composition root of `bantu start`: the platform, then every service module on it with
 * the narrow ports each uses, then the gateway in front of them. Nothing here reads
 * process.env or listens at import time.
 */
const here = path.dirname(fileURLToPath(import.meta.url));
export const VERSION: string = JSON.parse(fs.readFileSync(path.join(here, '..', 'package.json'), 'utf8')).version;

/** Every module's migrations, in the order they run. */
export const ALL_MIGRATIONS = [identityMigrations, filesMigrations, backupMigrations, exportsMigrations, webhooksMigrations];

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
  readonly bus: PlatformBus;
  readonly identity: IdentityService;
  readonly backup: BackupService;
  readonly files: FilesService;
  readonly exports: ExportsService;
  /** Whether this process leads that work now (`backup`, `nats-relay`, `files-sweep`, `outbox-prune`, `exports`). */
  isLeading(name: string): boolean;
}

interface Running {
  platform: Platform;
  gateway: FastifyInstance;
  identity: IdentityService;
  files: FilesService;
  backup: BackupService;
  exports: ExportsService;
}

export function createApp(config: Config, logger: Logger): App {
  let platform: Promise<Platform> | undefined;
  let running: Running | undefined;
  // The work this process contends for, by name (see start).
  const leaderships = new Map<string, Leadership>();

  async function start(): Promise<StartedApp> {
    let tls!: TlsMaterial;
    platform = openPlatform(config, logger, {
      name: 'bantu',
      version: VERSION,
      migrations: ALL_MIGRATIONS,
      exclusiveDataDir: true,
      relay: true,
      // Before anything starts (but after the lock has made the data dir, 0755, which the
      // embedded PostgreSQL must be able to enter): an unusable certificate fails at once.
      preflight: async () => {
        tls = await loadTls({ dataDir: config.dataDir, certFile: config.tls?.certFile, keyFile: config.tls?.keyFile, host: config.host });
      },
    });
    const p = await platform;
    const operator = config.operatorToken
      ? { value: config.operatorToken, created: false }
      : await readOrCreateSecret(path.join(p.secretsDir, 'operator-token'), () => `op_${randomToken()}`);
    // Links in mails and the tokens' issuer: BANTU_PUBLIC_URL, else the gateway's own URL once it listens.
    let gatewayUrl = `https://${config.host}:${config.port}`;

    const identity = createIdentityService({
      databases: p.databases,
      secretKey: p.secretKey,
      mailer: p.mailer,
      counters: p.counters,
      revocations: p.revocations,
      cache: p.cache,
      publicUrl: () => config.publicUrl ?? gatewayUrl,
      logger,
    });
    const usage = backupUsage(p.databases);
    const files = createFilesService({ ...filesDeps(p), backupBytes: (principal) => usage.heldBytes(principal) });
    const backup = createBackupService({
      databases: p.databases,
      sources: p.blobs,
      store: p.backups,
      bus: p.bus,
      files: files.port,
      worker: config.backupWorker,
      maxAttempts: config.backupMaxAttempts,
      sweepEveryMs: config.backupSweepMinutes * 60_000,
      metrics: p.metrics,
      logger: logger.child({ component: 'backup' }),
    });
    const exports = createExportsService(
      await exportsDeps(p, { files: files.exportSource, users: identity.userDirectory, audit: identity.auditPort }, () => config.publicUrl ?? gatewayUrl),
    );
    const webhooks = createWebhooksService(webhooksDeps(p, true, identity.notices));
    p.defer(() => webhooks.dispose());
    const notifications = createNotificationsService({
      bus: p.bus,
      verifiers: identity.verifiers,
      logger: logger.child({ component: 'notifications' }),
      metrics: p.metrics,
      corsOrigins: config.corsOrigins,
      authTimeoutMs: config.socketAuthTimeoutMs,
      recheckMs: config.socketRecheckMs,
    });

    await identity.start();
    p.defer(() => identity.close());
    const createdDefaultTenant = await ensureDefaultTenant(identity, p.secretsDir);

    const gateway = await createGateway({
      logger,
      tls,
      corsOrigins: config.corsOrigins,
      maxUploadBytes: config.maxUploadBytes,
      metrics: p.metrics,
      checks: p.checks,
      // Keys and user tokens first: the hot paths never pay for the operator check (a hash).
      verifiers: [...identity.verifiers, operatorVerifier(operator.value)],
      routes: [identity, files, backup, exports, webhooks].flatMap(routesOf),
      metricsToken: config.metricsToken,
      version: VERSION,
    });
    notifications.attach(gateway.server as https.Server);
    registerConsumers(p.bus, [identity, notifications]);
    // Work consumers: one process of the installation runs them (each notifications instance relays to its own sockets).
    registerConsumers(p.bus, [files, backup, webhooks], { led: true });
    for (const consumer of [...files.consumers, ...backup.consumers, ...webhooks.consumers]) p.busMetrics.watch(consumer.name);
    await p.bus.start();
    // Once per installation, however many processes run; alone, this one wins each at once.
    // Deferred before the gateway's close, so the work consumers stop after it has drained.
    const lead = (name: string, work: Parameters<typeof runLed>[2]) => leaderships.set(name, runLed(p, name, work));
    // Replayable history is kept for the retention, then pruned once every consumer has passed it.
    lead('outbox-prune', periodicWork(3600_000, () => p.bus.prune(config.eventRetentionHours).catch((error) => logger.warn({ err: error }, 'outbox prune failed'))));
    if (config.backupWorker) lead('backup', moduleWork(p.bus, backup));
    lead('webhooks', moduleWork(p.bus, webhooks));
    // With NATS_URL: committed events go on to JetStream too.
    const relay = natsRelayWork(p);
    if (relay) lead('nats-relay', relay);

    await gateway.listen({ host: config.host, port: config.port });
    p.defer(() => gateway.close());
    // Sockets first: an open WebSocket would otherwise hold the HTTPS server's close.
    p.defer(() => notifications.close());
    lead('files-sweep', moduleWork(p.bus, files));
    lead('exports', moduleWork(p.bus, exports));
    await Promise.all([...leaderships.values()].map((led) => led.decided));
    const port = (gateway.server.address() as AddressInfo).port;
    const httpPort = config.httpPort === undefined ? undefined : await listenHttpRejector(p, config.httpPort);

    const hostForUrl = config.host.includes(':') ? `[${config.host}]` : config.host;
    gatewayUrl = `https://${hostForUrl === '0.0.0.0' ? '127.0.0.1' : hostForUrl}:${port}`;
    running = { platform: p, gateway, identity, files: files.service, backup: backup.service, exports: exports.service };
    return {
      url: gatewayUrl,
      port,
      httpPort,
      tlsFingerprint: tls.fingerprint,
      tlsGenerated: tls.generated,
      generatedOperatorToken: operator.created ? operator.value : undefined,
      createdDefaultTenant,
      secretsDir: p.secretsDir,
    };
  }

  /** Closes in reverse order of opening: stop accepting, drain, then stop the database. */
  async function close(): Promise<void> {
    const opened = await platform?.catch(() => undefined);
    await opened?.close();
  }

  const get = <K extends keyof Running>(key: K): Running[K] => {
    if (!running) throw new Error('app not started');
    return running[key];
  };
  return {
    start,
    close,
    get gateway() {
      return get('gateway');
    },
    get databases() {
      return get('platform').databases;
    },
    get bus() {
      return get('platform').bus;
    },
    get identity() {
      return get('identity');
    },
    get backup() {
      return get('backup');
    },
    get files() {
      return get('files');
    },
    get exports() {
      return get('exports');
    },
    isLeading: (name) => leaderships.get(name)?.leading ?? false,
  };
}

/** What the files module takes from the platform, in every process that mounts it. */
export function filesDeps(platform: Platform): FilesDeps {
  const { config } = platform;
  return {
    databases: platform.databases,
    blobs: platform.blobs,
    bus: platform.bus,
    limits: { maxUploadBytes: config.maxUploadBytes, tenantQuotaBytes: config.tenantQuotaBytes ?? null },
    logger: platform.logger.child({ component: 'files' }),
  };
}

/**
 * What the exports module takes from the platform, in every process that mounts it, with the
 * ports it reaches files and identity through. Its zips are kept under BANTU_EXPORT_DIR, a
 * folder per environment.
 */
export async function exportsDeps(
  platform: Platform,
  ports: { files: FilesExportPort; users: UserDirectoryPort; audit: AuditPort },
  publicUrl: () => string,
) {
  const { config } = platform;
  const dir = config.exports.dir;
  return {
    ...ports,
    databases: platform.databases,
    store: { live: await DiskBlobStore.open(path.join(dir, 'live')), test: await DiskBlobStore.open(path.join(dir, 'test')) },
    mailer: platform.mailer,
    secretKey: platform.secretKey,
    publicUrl,
    limits: { maxRunning: config.exports.maxRunning, maxBytes: config.exports.maxBytes, keep: config.exports.keep, ttlHours: config.exports.ttlHours },
    logger: platform.logger.child({ component: 'exports' }),
  };
}

/** The webhooks module on a platform: where `worker`, its consumer and delivery worker run here (led: one process of the installation). */
export function webhooksDeps(platform: Platform, worker: boolean, notices: AdminNoticePort): WebhooksOptions {
  return {
    notices,
    databases: platform.databases,
    secretKey: platform.secretKey,
    config: platform.config.webhooks,
    worker,
    metrics: platform.metrics,
    logger: platform.logger.child({ component: 'webhooks' }),
  };
}

/** The first start creates tenant `default` and keeps its keys (shown once) in the secrets folder. */
export async function ensureDefaultTenant(identity: IdentityService, secretsDir: string): Promise<CreatedTenant | undefined> {
  if ((await identity.tenants.list(1)).rows.length > 0) return undefined;
  const created = await identity.tenants.create('default');
  await writeSecretFile(path.join(secretsDir, 'default-tenant.json'), `${JSON.stringify(created, null, 2)}\n`);
  return created;
}

/** The optional plain-HTTP port, which only ever answers 403 https_required. */
async function listenHttpRejector(platform: Platform, port: number): Promise<number> {
  const rejector: http.Server = createHttpRejector(platform.logger);
  await new Promise<void>((resolve, reject) => {
    rejector.once('error', reject);
    rejector.listen(port, platform.config.host, () => resolve());
  });
  platform.defer(() => new Promise<void>((resolve) => rejector.close(() => resolve())));
  return (rejector.address() as AddressInfo).port;
}

function randomToken(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64url');
}
