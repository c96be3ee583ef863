import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Leadership } from './adapters/db/leader.ts';
import type { Databases } from './adapters/db/pg.ts';
import { readOrCreateSecret } from './adapters/local/data-dir.ts';
import { ALL_MIGRATIONS, ensureDefaultTenant, exportsDeps, filesDeps, VERSION, webhooksDeps } from './app.ts';
import type { Config } from './core/config.ts';
import type { FilesExportPort, FilesPort } from './core/service-ports.ts';
import { operatorVerifier } from './gateway/auth.ts';
import { ServiceProxy } from './gateway/proxy.ts';
import { describeRoutes, type Route } from './gateway/routes.ts';
import { createGateway } from './gateway/server.ts';
import { SocketProxy } from './gateway/socket-proxy.ts';
import { loadTls, type TlsMaterial } from './gateway/tls.ts';
import { SERVICE_NAMES, type ServiceName } from './platform/catalogue.ts';
import { INTERNAL_HEADER, InternalTokens } from './platform/internal-token.ts';
import { moduleWork, periodicWork, runLed } from './platform/led.ts';
import { registerConsumers } from './platform/module.ts';
import { openPlatform, type Platform, type PlatformBus } from './platform/platform.ts';
import { announce, discover, ServiceRegistry } from './platform/registry.ts';
import { natsRelayWork } from './platform/relay.ts';
import { ServiceClient } from './platform/service-client.ts';
import { createServiceServer } from './platform/service-server.ts';
import type { BackupService } from './services/backup/domain/backup.service.ts';
import { backupUsage, createBackupService } from './services/backup/plugin.ts';
import { createExportsService } from './services/exports/plugin.ts';
import { HttpFilesExportPort } from './services/files/client/files-export-http-port.ts';
import { HttpFilesPort } from './services/files/client/files-http-port.ts';
import { createFilesService } from './services/files/plugin.ts';
import { HttpAuditPort, HttpUserDirectory } from './services/identity/client/identity-http-ports.ts';
import { AdminNotices } from './services/identity/domain/admin-notices.ts';
import { AuditLog } from './services/identity/domain/audit.ts';
import type { CreatedTenant } from './services/identity/domain/tenants.service.ts';
import { createIdentityService, type IdentityService } from './services/identity/plugin.ts';
import { createNotificationsService, type NotificationsService } from './services/notifications/plugin.ts';
import { createWebhooksService } from './services/webhooks/plugin.ts';

/**
 * The composition roots of one service alone: `bantu serve <name>` (distributed mode), and the
 * `bantu backup verify|restore|retry-dead-letters` tools. The same platform as `bantu start`
 * (every process applies the same migrations, under one lock: whichever starts first applies
 * them); only the modules mounted differ. A service listens for the gateway on
 * BANTU_SERVICE_HOST:BANTU_SERVICE_PORT and announces itself in the registry on NATS; the
 * gateway listens on BANTU_HOST:BANTU_PORT and proxies to the instances it finds there.
 */
export interface ServedService {
  name: ServiceName;
  /** The gateway's HTTPS URL, or the address a service announced. */
  url: string;
  /** identity: set when this start created tenant `default` (its keys are printed once). */
  createdDefaultTenant?: CreatedTenant;
  /** backup: whether this process runs the worker now (it leads `backup`) or stands by. */
  leader?: Leadership;
  secretsDir: string;
  close(): Promise<void>;
}

/** Another process of this installation runs with another BANTU_SECRET_KEY: they cannot understand each other. */
export class InstallationKeyMismatchError extends Error {
  constructor(service: string) {
    super(`a running ${service} instance of this installation (BANTU_NATS_PREFIX) uses another BANTU_SECRET_KEY; every process must share one`);
    this.name = 'InstallationKeyMismatchError';
  }
}

/** The API document generated from every service's routes (kept current by a test), published by a distributed gateway. */
const OPENAPI_DOCUMENT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'docs', 'openapi.json');

const SERVICES_BEHIND_GATEWAY = SERVICE_NAMES.filter((name) => name !== 'gateway');

export async function serveService(config: Config, logger: Logger, name: ServiceName): Promise<ServedService> {
  let tls: TlsMaterial | undefined;
  // The gateway's certificate is checked before anything heavy starts, as in `bantu start`.
  const loadGatewayTls = async () => {
    tls = await loadTls({ dataDir: config.dataDir, certFile: config.tls?.certFile, keyFile: config.tls?.keyFile, host: config.host });
  };
  const platform = await openPlatform(config, logger, {
    name,
    version: VERSION,
    migrations: ALL_MIGRATIONS,
    exclusiveDataDir: false,
    preflight: name === 'gateway' ? loadGatewayTls : undefined,
    // Next to the writers, and next to the work consumers that read what it relays.
    relay: name === 'files' || name === 'backup',
  });
  try {
    const nats = platform.nats;
    if (!nats) throw new Error('NATS_URL is required'); // checked by the CLI before
    const tokens = new InternalTokens(platform.secretKey);
    await checkInstallationKey(nats, config.natsPrefix, tokens.keyId());
    if (name === 'gateway' && tls) return await serveGateway(platform, nats, tokens, tls);
    return await serveBehindGateway(platform, nats, tokens, name);
  } catch (error) {
    await platform.close();
    throw error;
  }
}

async function serveGateway(platform: Platform, nats: NatsConnection, tokens: InternalTokens, tls: TlsMaterial): Promise<ServedService> {
  const { config, logger } = platform;
  const operator = config.operatorToken ?? (await readOrCreateSecret(path.join(platform.secretsDir, 'operator-token'), () => `op_${randomToken()}`)).value;
  // The gateway authenticates once for every service: identity's credential checks, in this
  // process (its keys and signing keys are read from the database; no identity routes here).
  const identity = identityModule(platform);
  await identity.start();
  platform.defer(() => identity.close());

  const registry = new ServiceRegistry(nats, { prefix: config.natsPrefix, tokens, services: SERVICES_BEHIND_GATEWAY, logger: logger.child({ component: 'registry' }) });
  await registry.start();
  platform.defer(() => registry.close());
  const proxy = new ServiceProxy({ directory: registry, tokens, verifiers: [...identity.verifiers, operatorVerifier(operator)], logger: logger.child({ component: 'proxy' }) });
  platform.defer(() => proxy.close());
  const sockets = new SocketProxy({ directory: registry, proxy, tokens, logger: logger.child({ component: 'socket-proxy' }) });

  const gateway = await createGateway({
    logger,
    tls,
    corsOrigins: config.corsOrigins,
    maxUploadBytes: config.maxUploadBytes,
    metrics: platform.metrics,
    checks: platform.checks,
    verifiers: [],
    routes: [],
    proxy,
    sockets,
    openapiDocument: JSON.parse(await fs.readFile(OPENAPI_DOCUMENT, 'utf8')),
    services: () => registry.counts(),
    metricsToken: config.metricsToken,
    version: VERSION,
  });
  await gateway.listen({ host: config.host, port: config.port });
  platform.defer(() => gateway.close());
  // First: piped WebSockets would hold the gateway's close.
  platform.defer(() => sockets.close());
  const port = (gateway.server.address() as AddressInfo).port;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  return { name: 'gateway', url: `https://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}`, secretsDir: platform.secretsDir, close: () => platform.close() };
}

async function serveBehindGateway(platform: Platform, nats: NatsConnection, tokens: InternalTokens, name: ServiceName): Promise<ServedService> {
  const { config, logger } = platform;
  let routes: Route[] = [];
  // Served to other services only: never announced, so the gateway never routes to them.
  let internalRoutes: Route[] = [];
  let createdDefaultTenant: CreatedTenant | undefined;
  let leader: Leadership | undefined;
  let notifications: NotificationsService | undefined;
  if (name === 'identity') {
    const identity = identityModule(platform);
    await identity.start();
    platform.defer(() => identity.close());
    createdDefaultTenant = await ensureDefaultTenant(identity, platform.secretsDir);
    routes = identity.routes;
    internalRoutes = identity.internalRoutes;
  } else if (name === 'files') {
    const usage = backupUsage(platform.databases);
    const files = createFilesService({ ...filesDeps(platform), backupBytes: (principal) => usage.heldBytes(principal) });
    // However many files instances run, one sweeps and one prunes the outbox's history.
    runLed(platform, 'files-sweep', moduleWork(platform.bus, files));
    runLed(platform, 'outbox-prune', pruneWork(platform));
    // Next to the writer: one files process of the installation relays the outbox to JetStream.
    const relay = natsRelayWork(platform);
    if (relay) {
      await platform.bus.start();
      runLed(platform, 'nats-relay', relay);
    }
    routes = files.routes;
    internalRoutes = files.internalRoutes;
  } else if (name === 'backup') {
    // What backup needs of files (listings, deletes, restores) goes to the files instances.
    const client = await serviceClient(platform, nats, tokens, ['files']);
    const backup = backupModule(platform, config.backupWorker, new HttpFilesPort(client));
    if (config.backupWorker) {
      leader = await runWorker(platform, backup);
    }
    routes = backup.routes;
  } else if (name === 'exports') {
    // What exports read of files (pages of metadata, versions, bytes) comes from the files
    // instances; users' addresses and audit entries from identity.
    const client = await serviceClient(platform, nats, tokens, ['files', 'identity']);
    const ports = { files: new HttpFilesExportPort(client), users: new HttpUserDirectory(client), audit: new HttpAuditPort(client) };
    const publicUrl = () => config.publicUrl ?? `https://${hostForUrl(config.host)}:${config.port}`;
    const exports = createExportsService(await exportsDeps(platform, ports, publicUrl));
    // However many exports instances run, one runs the queue and the sweep.
    runLed(platform, 'exports', moduleWork(platform.bus, exports));
    routes = exports.routes;
  } else if (name === 'notifications') {
    // Sockets authenticate with keys and user tokens themselves: identity's checks, in this process.
    const identity = identityModule(platform);
    await identity.start();
    platform.defer(() => identity.close());
    notifications = createNotificationsService({
      bus: platform.bus,
      verifiers: identity.verifiers,
      logger: logger.child({ component: 'notifications' }),
      metrics: platform.metrics,
      corsOrigins: config.corsOrigins,
      authTimeoutMs: config.socketAuthTimeoutMs,
      recheckMs: config.socketRecheckMs,
    });
    registerConsumers(platform.bus, [notifications]);
    await platform.bus.start();
  } else if (name === 'webhooks') {
    // Every instance serves the routes; one of the installation consumes and delivers.
    // Disabled endpoints are reported in identity's audit trail and to its admins: identity's domain, in this process.
    const notices = new AdminNotices(platform.databases, new AuditLog(platform.databases), platform.mailer);
    const webhooks = createWebhooksService(webhooksDeps(platform, true, notices));
    platform.defer(() => webhooks.dispose());
    registerConsumers(platform.bus, [webhooks], { led: true });
    await platform.bus.start();
    leader = runLed(platform, 'webhooks', moduleWork(platform.bus, webhooks));
    routes = webhooks.routes;
  } else {
    throw new Error(`bantu serve ${name}: not a service behind the gateway`);
  }

  const server = await createServiceServer({
    service: name,
    logger,
    routes,
    internalRoutes,
    tokens,
    metrics: platform.metrics,
    checks: platform.checks,
    metricsToken: config.metricsToken,
  });
  await server.listen({ host: config.service.host, port: config.service.port });
  platform.defer(() => server.close());
  const sessionPrefix = notifications ? randomBytes(4).toString('hex') : undefined;
  if (notifications && sessionPrefix) {
    const hub = notifications;
    const admit = (request: IncomingMessage) => {
      const token = request.headers[INTERNAL_HEADER];
      return tokens.verify(typeof token === 'string' ? token : undefined, request.method ?? '', request.url ?? '') !== null;
    };
    hub.attach(server.server, { admit, sessionPrefix });
    // Sockets first: an open WebSocket would otherwise hold the server's close.
    platform.defer(() => hub.close());
  }
  const address = `http://${hostForUrl(config.service.advertiseHost)}:${listeningPort(server)}`;
  const announced = await announce(nats, config.natsPrefix, { service: name, version: VERSION, address, keyId: tokens.keyId(), routes: describeRoutes(routes), sessionPrefix }, tokens);
  // Closed first: the gateways stop sending before this process stops answering. They notice
  // at their next questions to the registry; until then, what they send is still served.
  platform.defer(async () => {
    await announced.stop();
    await new Promise((resolve) => setTimeout(resolve, config.service.drainMs));
  });
  logger.info({ instance: announced.id, address }, 'registered in the registry');
  return { name, url: address, createdDefaultTenant, leader, secretsDir: platform.secretsDir, close: () => platform.close() };
}

/** A client of other services' instances found in the registry (distributed mode), closed with the platform. */
async function serviceClient(platform: Platform, nats: NatsConnection, tokens: InternalTokens, services: ServiceName[]): Promise<ServiceClient> {
  const registry = new ServiceRegistry(nats, { prefix: platform.config.natsPrefix, tokens, services, logger: platform.logger.child({ component: 'registry' }) });
  await registry.start();
  platform.defer(() => registry.close());
  const client = new ServiceClient(registry, tokens);
  platform.defer(() => client.close());
  return client;
}

/** Refuses to join an installation whose running processes use another BANTU_SECRET_KEY. */
async function checkInstallationKey(nats: NatsConnection, prefix: string, keyId: string): Promise<void> {
  for (const instance of await discover(nats, prefix, SERVICES_BEHIND_GATEWAY, 500)) {
    if (instance.keyId !== keyId) throw new InstallationKeyMismatchError(instance.service);
  }
}

function identityModule(platform: Platform): IdentityService {
  const { config } = platform;
  return createIdentityService({
    databases: platform.databases,
    secretKey: platform.secretKey,
    mailer: platform.mailer,
    counters: platform.counters,
    revocations: platform.revocations,
    cache: platform.cache,
    // Every process of the installation must agree on the tokens' issuer: set BANTU_PUBLIC_URL.
    publicUrl: () => config.publicUrl ?? `https://${hostForUrl(config.host)}:${config.port}`,
    logger: platform.logger,
  });
}

/**
 * The backup module on a files port: restores make versions and events like any write,
 * through files. `bantu serve backup` reaches the files instances over HTTP; the `bantu
 * backup` tools, run by an operator against the database, mount the files domain in-process
 * (no routes, no sweep).
 */
function backupModule(platform: Platform, worker: boolean, files: FilesPort) {
  const { config } = platform;
  return createBackupService({
    databases: platform.databases,
    sources: platform.blobs,
    store: platform.backups,
    bus: platform.bus,
    files,
    worker,
    maxAttempts: config.backupMaxAttempts,
    sweepEveryMs: config.backupSweepMinutes * 60_000,
    metrics: platform.metrics,
    logger: platform.logger.child({ component: 'backup' }),
  });
}

function listeningPort(server: FastifyInstance): number {
  return (server.server.address() as AddressInfo).port;
}

function hostForUrl(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function randomToken(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64url');
}

/** However many backup processes run, one runs the worker (consumer and sweep); the others stand by to take over. */
async function runWorker(platform: Platform, backup: ReturnType<typeof backupModule>): Promise<Leadership> {
  registerConsumers(platform.bus, [backup], { led: true });
  for (const consumer of backup.consumers) platform.busMetrics.watch(consumer.name);
  await platform.bus.start();
  // With NATS the worker reads what the relay publishes: a backup process may relay too.
  const relay = natsRelayWork(platform);
  if (relay) runLed(platform, 'nats-relay', relay);
  const leader = runLed(platform, 'backup', moduleWork(platform.bus, backup));
  await leader.decided;
  return leader;
}

/** Replayable history is kept for the retention, then pruned once every consumer has passed it. */
function pruneWork(platform: Platform) {
  const { bus, config, logger } = platform;
  return periodicWork(3600_000, () => bus.prune(config.eventRetentionHours).catch((error) => logger.warn({ err: error }, 'outbox prune failed')));
}

/** The backup module alone, for the `bantu backup` tools (no HTTP, no registry). */
export interface BackupProcess {
  databases: Databases;
  bus: PlatformBus;
  backup: BackupService;
  /** With the worker: whether this process leads `backup` (runs the worker and its sweep) or stands by. */
  leader?: Leadership;
  close(): Promise<void>;
}

export async function openBackupProcess(config: Config, logger: Logger, options: { worker: boolean }): Promise<BackupProcess> {
  const platform = await openPlatform(config, logger, { name: 'backup', migrations: ALL_MIGRATIONS, exclusiveDataDir: false, relay: options.worker });
  try {
    const backup = backupModule(platform, options.worker, createFilesService(filesDeps(platform)).port);
    const leader = options.worker ? await runWorker(platform, backup) : undefined;
    return { databases: platform.databases, bus: platform.bus, backup: backup.service, leader, close: () => platform.close() };
  } catch (error) {
    await platform.close();
    throw error;
  }
}

/** The files' export reads alone, for `bantu export` (no HTTP, no registry, no worker). */
export interface ExportProcess {
  files: FilesExportPort;
  maxBytes: number;
  close(): Promise<void>;
}

export async function openExportProcess(config: Config, logger: Logger): Promise<ExportProcess> {
  const platform = await openPlatform(config, logger, { name: 'exports', migrations: ALL_MIGRATIONS, exclusiveDataDir: false });
  return { files: createFilesService(filesDeps(platform)).exportSource, maxBytes: config.exports.maxBytes, close: () => platform.close() };
}
