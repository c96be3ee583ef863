import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import { sql } from 'kysely';
import type { Logger } from 'pino';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { DiskBlobStore } from '../adapters/blob/disk.ts';
import { openS3Stores, type S3Stores } from '../adapters/blob/s3.ts';
import { NatsBus } from '../adapters/bus/nats-bus.ts';
import { OutboxBus } from '../adapters/bus/outbox.ts';
import { MemoryCounterStore } from '../adapters/cache/memory.ts';
import { MemoryReadThroughCache } from '../adapters/cache/memory-cache.ts';
import { MemoryRevocationList } from '../adapters/cache/memory-revocations.ts';
import { RedisCounterStore } from '../adapters/cache/redis.ts';
import { RedisReadThroughCache } from '../adapters/cache/redis-cache.ts';
import { RedisConnection } from '../adapters/cache/redis-connection.ts';
import { RedisRevocationList } from '../adapters/cache/redis-revocations.ts';
import { startEmbeddedPostgres } from '../adapters/db/embedded.ts';
import { type Databases, ENVIRONMENTS, type MigrationSet, migrate, openDatabases } from '../adapters/db/pg.ts';
import { dataPath, lockDataDir, readOrCreateSecret } from '../adapters/local/data-dir.ts';
import { FileMailer } from '../adapters/mail/files.ts';
import { SmtpMailer } from '../adapters/mail/smtp.ts';
import { connectNats, pingNats } from '../adapters/nats/connection.ts';
import type { Config } from '../core/config.ts';
import type { BlobStore, CounterStore, EventBus, Mailer, ReadThroughCache, RevocationList } from '../core/ports.ts';
import type { Environment } from '../core/principal.ts';
import type { ReadinessCheck } from '../gateway/operations.ts';
import type { ServiceMigrations } from './module.ts';
import { type BusMetrics, registerBusMetrics, registerPoolMetrics } from './platform-metrics.ts';
import { startTracing } from './tracing.ts';

/**
 * What every Bantu process stands on, built once whatever it mounts: the data dir lock, the
 * databases (embedded PostgreSQL or DATABASE_URL) and their migrations, the bus, the blob and
 * backup stores, the mailer, the state processes share (counters, revocations, cache), metrics
 * and readiness checks.
 *
 * The platform owns the close order: everything opened here, or handed to `defer` by the
 * modules built on it, closes in reverse order of opening.
 */
/** The process's bus: the port, and the pruning of the outbox's replayable history (led work). */
export interface PlatformBus extends EventBus {
  prune(retentionHours: number): Promise<number>;
}

export interface Platform {
  readonly config: Config;
  readonly logger: Logger;
  readonly databases: Databases;
  /**
   * The outbox alone, or with NATS_URL the NATS driver: the same outbox, relayed to JetStream,
   * its work consumers on JetStream durable consumers (src/adapters/bus/nats-bus.ts).
   */
  readonly bus: PlatformBus;
  /** NATS (NATS_URL): the registry of distributed mode, and the bus's transport. */
  readonly nats?: NatsConnection;
  /** The files' content, one root (folder, or S3 bucket with S3_BUCKET) per environment: live and test never share storage. */
  readonly blobs: Record<Environment, BlobStore>;
  /** The backup store, its own root per environment (BANTU_BACKUP_DIR, so it can live on another disk, or S3_BACKUP_BUCKET). */
  readonly backups: Record<Environment, BlobStore>;
  readonly mailer: Mailer;
  /** Rate-limit counters: in memory for one process, in Redis when several share the limits. */
  readonly counters: CounterStore;
  /**
   * What stops being valid before it expires (deleted users, ended sessions), and the cache in
   * front of the database: in memory for one process, in Redis (REDIS_URL) when several serve
   * the same tenants, so that whatever one process revokes or changes, every other sees at once.
   */
  readonly revocations: RevocationList;
  readonly cache: ReadThroughCache;
  readonly metrics: Registry;
  /** The bus consumers whose lag this process reports (bantu_bus_* metrics). */
  readonly busMetrics: BusMetrics;
  readonly checks: Map<string, ReadinessCheck>;
  readonly secretsDir: string;
  /** Seals the JWT signing keys in the databases (BANTU_SECRET_KEY, or secrets/secret-key). */
  readonly secretKey: string;
  /** Runs `closer` when the platform closes, before whatever was opened earlier. */
  defer(closer: () => unknown): void;
  close(): Promise<void>;
}

export interface PlatformOptions {
  /** The process's name in logs, metrics (the `service` label) and on NATS: `bantu` for `bantu start`, else the service it serves. */
  name: string;
  /** Bantu's version, which its traces name. */
  version?: string;
  /** The migrations of the modules this process mounts (the platform adds its own and the bus's). */
  migrations: ServiceMigrations[];
  /**
   * Hold the data dir lock even with DATABASE_URL (`bantu start`: one server per data dir).
   * Without it, the lock is taken only to run the data dir's embedded PostgreSQL.
   */
  exclusiveDataDir: boolean;
  /**
   * Checks that must fail the start before anything heavy starts (Redis, PostgreSQL), run
   * right after the data dir lock has made the data dir: the gateway's TLS material.
   */
  preflight?: () => Promise<void>;
  /**
   * With NATS: this process may relay the outbox to JetStream, under the `nats-relay`
   * leadership (`bantu start`, every `bantu serve files`): the bus registers the relay
   * stopped, and src/platform/relay.ts starts it while leading.
   */
  relay?: boolean;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const PLATFORM_MIGRATIONS: MigrationSet[] = [
  { service: 'platform', folder: path.join(here, '..', 'adapters', 'db', 'migrations') },
  { service: 'bus', folder: path.join(here, '..', 'adapters', 'bus', 'migrations') },
];

/** Migrations of each environment database and of the control database, in the order they run. */
export function migrationPlan(modules: ServiceMigrations[]): { control: MigrationSet[]; environment: MigrationSet[] } {
  return {
    control: modules.flatMap((m) => m.control ?? []),
    environment: [...PLATFORM_MIGRATIONS, ...modules.flatMap((m) => m.environment ?? [])],
  };
}

export async function openPlatform(config: Config, logger: Logger, options: PlatformOptions): Promise<Platform> {
  const closers: Array<() => unknown> = [];
  let closing: Promise<void> | undefined;
  const close = () => {
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
  };
  try {
    // First opened, last closed: the spans of the shutdown itself are sent too.
    const tracing = startTracing(config.tracing, { serviceName: options.name === 'bantu' ? 'bantu' : `bantu-${options.name}`, version: options.version ?? 'unknown' }, logger);
    closers.push(() => tracing.close());
    if (options.exclusiveDataDir || !config.databaseUrl) closers.push(await lockDataDir(config.dataDir));
    await options.preflight?.();
    // Before anything starts: a Redis that cannot be reached fails the start at once.
    const redis = config.redisUrl ? await RedisConnection.connect(config.redisUrl, { prefix: config.redisPrefix, logger: logger.child({ component: 'redis' }) }) : undefined;
    if (redis) closers.push(() => redis.close());
    // The same for S3: a bucket that cannot be used (credentials, permissions, no server) fails the start here.
    const s3 = async (store: Config['s3Blobs'], component: string): Promise<S3Stores | undefined> => {
      if (!store) return undefined;
      const stores = await openS3Stores(store, { logger: logger.child({ component }) });
      closers.push(() => stores.close());
      return stores;
    };
    const s3Blobs = await s3(config.s3Blobs, 's3-blobs');
    const s3Backups = await s3(config.s3Backups, 's3-backups');
    const nats = config.natsUrl ? await connectNats(config.natsUrl, `${config.natsPrefix}-${options.name}`, logger.child({ component: 'nats' })) : undefined;
    if (nats) closers.push(() => nats.close());

    let baseUrl = config.databaseUrl;
    if (!baseUrl) {
      const embedded = await startEmbeddedPostgres(config.dataDir, logger);
      closers.push(() => embedded.stop());
      baseUrl = embedded.url.replace(/\/postgres$/, '/bantu');
    }
    const databases = await openDatabases(baseUrl, undefined, config.databasePoolSize, config.databaseIdleMs);
    closers.push(() => databases.close());
    // Under the migrations' advisory lock: whichever process starts first applies them.
    const plan = migrationPlan(options.migrations);
    const applied = [
      ...(await migrate(databases.control, plan.control)),
      ...(await Promise.all(ENVIRONMENTS.map((env) => migrate(databases.environments[env], plan.environment)))).flat(),
    ];
    if (applied.length > 0) logger.info({ applied }, 'migrations applied');

    const openStores = async (root: (env: Environment) => string) => ({ live: await DiskBlobStore.open(root('live')), test: await DiskBlobStore.open(root('test')) });
    const blobs = s3Blobs ?? (await openStores((env) => path.join(config.blobDir, env)));
    const backups = s3Backups ?? (await openStores((env) => path.join(config.backupDir, env)));

    const mailer: Mailer = config.smtpUrl
      ? new SmtpMailer(config.smtpUrl, config.mailFrom, logger.child({ component: 'mail' }))
      : new FileMailer(dataPath(config.dataDir, 'mail'), config.mailFrom, logger.child({ component: 'mail' }));
    closers.push(() => mailer.close());

    const secretsDir = dataPath(config.dataDir, 'secrets');
    // Losing it only means new signing keys (users log in again).
    const secretKey = config.secretKey ?? (await readOrCreateSecret(path.join(secretsDir, 'secret-key'))).value;

    const metrics = new Registry();
    metrics.setDefaultLabels({ service: options.name });
    collectDefaultMetrics({ register: metrics });
    registerPoolMetrics(metrics, databases);
    const checks = new Map<string, ReadinessCheck>([
      ['database', async () => void (await sql`select 1`.execute(databases.control))],
      ['database_live', async () => void (await sql`select 1`.execute(databases.environments.live))],
      ['database_test', async () => void (await sql`select 1`.execute(databases.environments.test))],
    ]);
    if (redis) checks.set('redis', () => redis.ping());
    if (nats) checks.set('nats', () => pingNats(nats));
    for (const [name, stores] of [['blobs', s3Blobs], ['backups', s3Backups]] as const) {
      if (stores) for (const env of ENVIRONMENTS) checks.set(`s3_${name}_${env}`, () => stores[env].ping());
    }

    const busLogger = logger.child({ component: 'bus' });
    const bus = nats
      ? new NatsBus(databases, nats, busLogger, {
          streams: { prefix: config.natsPrefix, ...config.natsStreams },
          durable: config.natsDurable,
          relay: options.relay ? 'led' : 'none',
        })
      : new OutboxBus(databases, busLogger);
    // Started by the process once every module has registered its consumers; closed before the databases.
    closers.push(() => bus.close());
    const busMetrics = registerBusMetrics(metrics, bus);

    return {
      config,
      logger,
      databases,
      bus,
      nats,
      blobs,
      backups,
      mailer,
      counters: redis ? new RedisCounterStore(redis) : new MemoryCounterStore(),
      revocations: redis ? new RedisRevocationList(redis) : new MemoryRevocationList(),
      cache: redis ? new RedisReadThroughCache(redis) : new MemoryReadThroughCache(),
      metrics,
      busMetrics,
      checks,
      secretsDir,
      secretKey,
      defer: (closer) => closers.push(closer),
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}
