import { isIP } from 'node:net';
import path from 'node:path';
import { type Static, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';

/**
 * The one configuration schema. Every setting is an environment variable (an optional
 * `.env` file feeds the same map); `loadConfig` validates them all at once and returns
 * either the typed config or the list of every problem, so a bad start names them all.
 * Only the CLI reads `process.env`: everything else receives a `Config`.
 */
const port = (description: string, defaultValue?: number) =>
  Type.Integer({ minimum: 0, maximum: 65535, description, ...(defaultValue === undefined ? {} : { default: defaultValue }) });
const url = (description: string) => Type.String({ pattern: '^[a-z][a-z0-9+.-]*://', description });
const positiveInt = (description: string, defaultValue?: number) =>
  Type.Integer({ minimum: 1, description, ...(defaultValue === undefined ? {} : { default: defaultValue }) });
/** A bucket name prefix: `<prefix>-live` and `<prefix>-test` must be valid bucket names (3..63 of a-z 0-9 . -). */
const bucketPrefix = (description: string) => Type.String({ pattern: '^[a-z0-9][a-z0-9.-]{0,57}$', description });

/** CopyObject, which moves an upload to its content address, copies at most 5 GiB. */
const S3_MAX_UPLOAD_BYTES = 5 * 1024 ** 3;

export const EnvSchema = Type.Object({
  BANTU_DATA_DIR: Type.String({ minLength: 1, default: './data', description: 'Where embedded data lives (database, blobs, keys, mail)' }),
  BANTU_HOST: Type.String({ minLength: 1, default: '127.0.0.1', description: 'Address the HTTPS gateway listens on' }),
  BANTU_PORT: port('HTTPS port of the gateway (0 picks a free one)', 8443),
  BANTU_HTTP_PORT: Type.Optional(port('When set, a plain-HTTP port that answers every request with 403 https_required')),
  BANTU_TLS_CERT: Type.Optional(Type.String({ minLength: 1, description: 'PEM certificate file; without it a self-signed one is made under the data dir' })),
  BANTU_TLS_KEY: Type.Optional(Type.String({ minLength: 1, description: 'PEM private key file for BANTU_TLS_CERT' })),
  BANTU_OPERATOR_TOKEN: Type.Optional(Type.String({ minLength: 24, description: 'Platform operator secret (creates tenants); generated on first start when unset' })),
  BANTU_METRICS_TOKEN: Type.Optional(
    Type.String({ minLength: 24, description: 'When set, /metrics answers only requests with `Authorization: Bearer <token>` (401 otherwise); unset, /metrics is open' }),
  ),
  BANTU_CORS_ORIGINS: Type.String({ default: '', description: 'Comma-separated origins allowed for browsers and Socket.IO clients' }),
  BANTU_MAX_UPLOAD_BYTES: positiveInt('Largest accepted upload, in bytes', 1024 ** 3),
  BANTU_TENANT_QUOTA_BYTES: Type.Optional(positiveInt('Storage quota per tenant and environment, in bytes (unset: unlimited)')),
  BANTU_LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((level) => Type.Literal(level)),
    { default: 'info', description: 'Log level' },
  ),
  BANTU_SECRET_KEY: Type.Optional(Type.String({ minLength: 32, description: 'Key that encrypts signing keys at rest; generated under the data dir when unset' })),
  BANTU_BLOB_DIR: Type.Optional(Type.String({ minLength: 1, description: "Files' content root (default <data dir>/blobs); a folder several files processes may share" })),
  BANTU_BACKUP_DIR: Type.Optional(Type.String({ minLength: 1, description: 'Backup store root (default <data dir>/backups)' })),
  BANTU_BACKUP_WORKER: Type.Union([Type.Literal('on'), Type.Literal('off')], {
    default: 'on',
    description: 'Run the backup worker in this process; off when `bantu serve backup` runs it elsewhere',
  }),
  BANTU_BACKUP_MAX_ATTEMPTS: positiveInt('Tries of a file event that can never be copied (bytes missing or not matching their checksum) before the backup sets it aside as a dead letter; store and database failures are retried until they pass', 5),
  BANTU_BACKUP_SWEEP_MINUTES: positiveInt('How often the backup enforces retention and removes unreferenced backup blobs', 60),
  BANTU_WEBHOOK_ALLOWED_NETWORKS: Type.String({
    default: '',
    description: 'Comma-separated CIDRs webhook URLs may reach although not public (loopback, private), plain http included: for tests and private installations',
  }),
  BANTU_WEBHOOK_TIMEOUT_MS: positiveInt('How long a webhook delivery attempt may take before it counts as failed', 15_000),
  BANTU_WEBHOOK_RETRY_BASE_MS: positiveInt('Delay before the first retry of a failed webhook delivery; each next one is about 3 times longer (capped at 6 h), with jitter', 5_000),
  BANTU_WEBHOOK_RETRY_WINDOW_SECONDS: positiveInt('How long a failing webhook delivery is retried (from its first failure) before its endpoint is disabled; 3 days', 259_200),
  BANTU_WEBHOOK_CONCURRENCY: positiveInt('Attempts in flight at once to one webhook endpoint (per process running the deliveries)', 4),
  BANTU_PUBLIC_URL: Type.Optional(url('Public base URL used in mailed links (default https://BANTU_HOST:BANTU_PORT)')),
  DATABASE_URL: Type.Optional(url('External PostgreSQL; replaces the embedded one. Through PgBouncer in transaction mode, set its `max_prepared_statements` (hot paths use prepared statements)')),
  BANTU_DATABASE_POOL_SIZE: Type.Integer({
    minimum: 2,
    maximum: 200,
    default: 10,
    description: 'Connections each process may open to each environment database (half that to the control one): keep processes × pools under PostgreSQL max_connections',
  }),
  BANTU_DATABASE_IDLE_MS: Type.Integer({
    minimum: 100,
    maximum: 3_600_000,
    default: 30_000,
    description: 'How long a pooled connection stays open unused before it is closed: lower it when many processes share a small max_connections',
  }),
  NATS_URL: Type.Optional(url('NATS JetStream (distributed mode): the registry where services announce themselves')),
  BANTU_NATS_PREFIX: Type.String({
    pattern: '^[A-Za-z0-9_-]{1,32}$',
    default: 'bantu',
    description: 'Prefix of every NATS name Bantu uses (registry services, subjects): give each installation sharing one NATS its own',
  }),
  BANTU_NATS_REPLICAS: Type.Integer({ minimum: 1, maximum: 5, default: 1, description: 'Replicas of each JetStream events stream (a clustered NATS: 3 survives the loss of one server)' }),
  BANTU_NATS_STORAGE: Type.Union([Type.Literal('file'), Type.Literal('memory')], { default: 'file', description: 'Where JetStream keeps the events streams: file (survives a NATS restart) or memory' }),
  BANTU_NATS_MAX_AGE_HOURS: Type.Optional(positiveInt('How long the JetStream events streams keep an event (default BANTU_EVENT_RETENTION_HOURS)')),
  BANTU_NATS_MAX_DELIVER: Type.Integer({
    minimum: 2,
    maximum: 1000,
    default: 20,
    description:
      'JetStream deliveries of one event to a work consumer (backup) before it is set aside as a dead letter: a redelivery happens only when the process handling it stopped or died',
  }),
  BANTU_NATS_ACK_WAIT_SECONDS: Type.Integer({
    minimum: 1,
    maximum: 3600,
    default: 30,
    description:
      'How long JetStream waits for a work consumer to acknowledge an event before redelivering it (a live consumer keeps extending it); also the pause of a consumer taking over from one that died',
  }),
  BANTU_SERVICE_HOST: Type.String({ minLength: 1, default: '127.0.0.1', description: 'Address a service (every one but the gateway, distributed mode) listens on for the gateway' }),
  BANTU_SERVICE_PORT: port('Port a service listens on for the gateway (0 picks a free one)', 0),
  BANTU_SERVICE_DRAIN_MS: Type.Integer({
    minimum: 0,
    maximum: 60_000,
    default: 4000,
    description: 'How long a stopping service keeps serving after leaving the registry, while the gateways notice (they ask every second)',
  }),
  BANTU_SERVICE_ADVERTISE_HOST: Type.Optional(
    Type.String({ minLength: 1, description: 'Host name the gateway should use to reach this service (default BANTU_SERVICE_HOST; set it when listening on 0.0.0.0, e.g. the container name)' }),
  ),
  REDIS_URL: Type.Optional(url('Redis: what every process must share (login throttling counters, revoked users and sessions, the user cache), kept across restarts; without it all of it lives in memory')),
  BANTU_REDIS_PREFIX: Type.String({
    minLength: 1,
    maxLength: 64,
    default: 'bantu:',
    description: 'Prefix of every Redis key Bantu writes: give each installation sharing one Redis its own',
  }),
  SMTP_URL: Type.Optional(url('SMTP server for mail; without it mail is written as .eml files')),
  S3_ENDPOINT: Type.Optional(url('S3-compatible service for S3_BUCKET and S3_BACKUP_BUCKET (MinIO, Garage, Ceph RGW...); unset: AWS S3 in S3_REGION')),
  S3_REGION: Type.String({ minLength: 1, default: 'us-east-1', description: 'S3 region (requests are signed for it)' }),
  S3_ACCESS_KEY_ID: Type.Optional(Type.String({ minLength: 1, description: 'S3 access key, needed with S3_BUCKET or S3_BACKUP_BUCKET; the only credentials used (no environment, profile or instance-metadata lookups)' })),
  S3_SECRET_ACCESS_KEY: Type.Optional(Type.String({ minLength: 1, description: 'Secret of S3_ACCESS_KEY_ID' })),
  S3_FORCE_PATH_STYLE: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')], {
    description: 'Path-style requests (https://host/bucket/key) instead of virtual-hosted ones (https://bucket.host/key); default true when S3_ENDPOINT is set, false for AWS',
  })),
  S3_BUCKET: Type.Optional(bucketPrefix('Files in S3: a bucket name prefix, blobs go to <prefix>-live and <prefix>-test (created when missing); unset: folders under the data dir')),
  S3_BACKUP_BUCKET: Type.Optional(bucketPrefix('Backups in S3: a bucket name prefix, backups go to <prefix>-live and <prefix>-test (created when missing); unset: BANTU_BACKUP_DIR')),
  S3_BACKUP_ENDPOINT: Type.Optional(url('Backups in another S3 service than S3_ENDPOINT (same keys and region)')),
  BANTU_SOCKET_AUTH_TIMEOUT_MS: positiveInt('A Socket.IO client that has not sent User_connect or Admin_connect by then is disconnected', 10_000),
  BANTU_SOCKET_RECHECK_MS: positiveInt('How often a live subscription re-checks its credential (revoked keys, deleted users and ended sessions end it)', 30_000),
  BANTU_EVENT_RETENTION_HOURS: positiveInt('How long file events stay replayable with `since` (at least 24 h in production)', 72),
  BANTU_EXPORT_DIR: Type.Optional(Type.String({ minLength: 1, description: 'Where finished zip exports are kept (default <data dir>/exports); a folder every exports process must share' })),
  BANTU_EXPORTS_MAX_RUNNING: positiveInt('Zip exports a tenant may have pending or running at once, per environment (more: 429 rate_limited)', 2),
  BANTU_EXPORTS_MAX_BYTES: positiveInt('Largest zip export, in bytes of file content (a larger one ends failed)', 10 * 1024 ** 3),
  BANTU_EXPORTS_KEEP: positiveInt('Finished zip exports kept per tenant and environment; a new export expires the oldest beyond it', 10),
  BANTU_EXPORTS_TTL_HOURS: positiveInt('How long a finished zip export and its mailed link stay valid', 24),
  OTEL_EXPORTER_OTLP_ENDPOINT: Type.Optional(url('OpenTelemetry collector (OTLP/HTTP): traces go to <url>/v1/traces; unset (and no OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), tracing is off at no cost')),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: Type.Optional(url('Full OTLP/HTTP traces URL; overrides OTEL_EXPORTER_OTLP_ENDPOINT')),
  OTEL_EXPORTER_OTLP_HEADERS: Type.Optional(Type.String({ pattern: '^[^=,]+=[^,]*(,[^=,]+=[^,]*)*$', description: 'Headers sent to the collector, `name=value` pairs separated by commas (values URL-encoded), e.g. `authorization=Bearer%20xyz`' })),
  OTEL_TRACES_SAMPLER_ARG: Type.Number({ minimum: 0, maximum: 1, default: 1, description: 'Share of new traces recorded (0 to 1); a request whose traceparent is sampled (or not) keeps that decision' }),
  MAIL_FROM: Type.String({ default: 'Bantu <no-reply@bantu.local>', description: 'Sender of mails' }),
});

export type Env = Static<typeof EnvSchema>;

export interface Config {
  dataDir: string;
  host: string;
  port: number;
  httpPort?: number;
  tls?: { certFile: string; keyFile: string };
  operatorToken?: string;
  metricsToken?: string;
  /** Set when traces are exported (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). */
  tracing?: TracingConfig;
  corsOrigins: string[];
  maxUploadBytes: number;
  tenantQuotaBytes?: number;
  logLevel: string;
  secretKey?: string;
  blobDir: string;
  backupDir: string;
  backupWorker: boolean;
  backupMaxAttempts: number;
  backupSweepMinutes: number;
  webhooks: { allowedNetworks: string; timeoutMs: number; retryBaseMs: number; retryWindowSeconds: number; concurrency: number };
  publicUrl?: string;
  databaseUrl?: string;
  databasePoolSize: number;
  databaseIdleMs: number;
  natsUrl?: string;
  natsPrefix: string;
  /** The JetStream events streams (one per environment) the outbox is relayed to. */
  natsStreams: { replicas: number; storage: 'file' | 'memory'; maxAgeHours: number };
  /** The JetStream durable consumers of the work consumers (backup). */
  natsDurable: { maxDeliver: number; ackWaitMs: number };
  /** Where a service alone (distributed mode) listens for the gateway, and the host it announces. */
  service: { host: string; port: number; advertiseHost: string; drainMs: number };
  redisUrl?: string;
  redisPrefix: string;
  smtpUrl?: string;
  mailFrom: string;
  socketAuthTimeoutMs: number;
  socketRecheckMs: number;
  eventRetentionHours: number;
  /** Zip exports: where they are kept, and their limits. */
  exports: { dir: string; maxRunning: number; maxBytes: number; keep: number; ttlHours: number };
  /** Files in S3 (S3_BUCKET); unset: folders under the data dir. */
  s3Blobs?: S3StoreConfig;
  /** Backups in S3 (S3_BACKUP_BUCKET); unset: BANTU_BACKUP_DIR. */
  s3Backups?: S3StoreConfig;
}

/** One S3 store: where the service is, the keys, and the bucket name prefix (`<prefix>-live`, `<prefix>-test`). */
export interface S3StoreConfig {
  endpoint?: string;
  region: string;
  forcePathStyle: boolean;
  accessKeyId: string;
  secretAccessKey: string;
  bucketPrefix: string;
}

export interface ConfigProblem {
  variable: string;
  message: string;
}

export interface TracingConfig {
  /** The OTLP/HTTP traces URL. */
  url: string;
  headers: Record<string, string>;
  sampleRatio: number;
}

function tracingOf(e: Env): TracingConfig | undefined {
  const base = e.OTEL_EXPORTER_OTLP_ENDPOINT;
  const url = e.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? (base ? `${base.replace(/\/+$/, '')}/v1/traces` : undefined);
  if (!url) return undefined;
  const headers: Record<string, string> = {};
  for (const pair of (e.OTEL_EXPORTER_OTLP_HEADERS ?? '').split(',').filter(Boolean)) {
    const at = pair.indexOf('=');
    const value = pair.slice(at + 1).trim();
    headers[pair.slice(0, at).trim().toLowerCase()] = safeDecode(value);
  }
  return { url, headers, sampleRatio: e.OTEL_TRACES_SAMPLER_ARG };
}

function safeDecode(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value; // not URL-encoded after all: sent as written
  }
}

export type ConfigResult = { ok: true; config: Config } | { ok: false; problems: ConfigProblem[] };

const known = new Set(Object.keys(EnvSchema.properties));

export function loadConfig(env: Record<string, string | undefined>, cwd = process.cwd()): ConfigResult {
  // Keep only our variables, and treat empty strings as unset (a common shell habit).
  const raw: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(env)) {
    if (known.has(name) && value !== undefined && value !== '') raw[name] = value;
  }
  const candidate = Value.Convert(EnvSchema, Value.Default(EnvSchema, raw));
  const problems: ConfigProblem[] = [...Value.Errors(EnvSchema, candidate)].map((error) => ({
    variable: error.path.replace(/^\//, '') || '(root)',
    message: `${error.message} (got ${JSON.stringify(error.value)})`,
  }));
  // Checks across variables read the raw strings, so they run (and report) even when the
  // schema found problems: the operator sees every problem at once.
  const has = (name: string) => typeof raw[name] === 'string';
  if (has('BANTU_TLS_CERT') !== has('BANTU_TLS_KEY')) {
    problems.push({ variable: has('BANTU_TLS_CERT') ? 'BANTU_TLS_KEY' : 'BANTU_TLS_CERT', message: 'BANTU_TLS_CERT and BANTU_TLS_KEY go together' });
  }
  for (const cidr of String(raw.BANTU_WEBHOOK_ALLOWED_NETWORKS ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
    if (!isCidr(cidr)) problems.push({ variable: 'BANTU_WEBHOOK_ALLOWED_NETWORKS', message: `not a CIDR (address/prefix): ${cidr}` });
  }
  const corsOrigins = String(raw.BANTU_CORS_ORIGINS ?? '').split(',').map((origin) => origin.trim()).filter(Boolean);
  for (const origin of corsOrigins) {
    if (origin !== '*' && !/^https?:\/\/[^/\s]+$/.test(origin)) {
      problems.push({ variable: 'BANTU_CORS_ORIGINS', message: `not an origin (scheme://host[:port]): ${origin}` });
    }
  }
  problems.push(...s3Problems(raw, candidate as Env));
  if (problems.length > 0) return { ok: false, problems };

  const e = candidate as Env;
  const dataDir = path.resolve(cwd, e.BANTU_DATA_DIR);
  return {
    ok: true,
    config: {
      dataDir,
      host: e.BANTU_HOST,
      port: e.BANTU_PORT,
      httpPort: e.BANTU_HTTP_PORT,
      tls: e.BANTU_TLS_CERT && e.BANTU_TLS_KEY ? { certFile: path.resolve(cwd, e.BANTU_TLS_CERT), keyFile: path.resolve(cwd, e.BANTU_TLS_KEY) } : undefined,
      operatorToken: e.BANTU_OPERATOR_TOKEN,
      metricsToken: e.BANTU_METRICS_TOKEN,
      tracing: tracingOf(e),
      corsOrigins,
      maxUploadBytes: e.BANTU_MAX_UPLOAD_BYTES,
      tenantQuotaBytes: e.BANTU_TENANT_QUOTA_BYTES,
      logLevel: e.BANTU_LOG_LEVEL,
      secretKey: e.BANTU_SECRET_KEY,
      blobDir: e.BANTU_BLOB_DIR ? path.resolve(cwd, e.BANTU_BLOB_DIR) : path.join(dataDir, 'blobs'),
      backupDir: e.BANTU_BACKUP_DIR ? path.resolve(cwd, e.BANTU_BACKUP_DIR) : path.join(dataDir, 'backups'),
      backupWorker: e.BANTU_BACKUP_WORKER === 'on',
      backupMaxAttempts: e.BANTU_BACKUP_MAX_ATTEMPTS,
      backupSweepMinutes: e.BANTU_BACKUP_SWEEP_MINUTES,
      webhooks: {
        allowedNetworks: e.BANTU_WEBHOOK_ALLOWED_NETWORKS,
        timeoutMs: e.BANTU_WEBHOOK_TIMEOUT_MS,
        retryBaseMs: e.BANTU_WEBHOOK_RETRY_BASE_MS,
        retryWindowSeconds: e.BANTU_WEBHOOK_RETRY_WINDOW_SECONDS,
        concurrency: e.BANTU_WEBHOOK_CONCURRENCY,
      },
      publicUrl: e.BANTU_PUBLIC_URL,
      databaseUrl: e.DATABASE_URL,
      databasePoolSize: e.BANTU_DATABASE_POOL_SIZE,
      databaseIdleMs: e.BANTU_DATABASE_IDLE_MS,
      natsUrl: e.NATS_URL,
      natsPrefix: e.BANTU_NATS_PREFIX,
      natsStreams: { replicas: e.BANTU_NATS_REPLICAS, storage: e.BANTU_NATS_STORAGE, maxAgeHours: e.BANTU_NATS_MAX_AGE_HOURS ?? e.BANTU_EVENT_RETENTION_HOURS },
      natsDurable: { maxDeliver: e.BANTU_NATS_MAX_DELIVER, ackWaitMs: e.BANTU_NATS_ACK_WAIT_SECONDS * 1000 },
      service: { host: e.BANTU_SERVICE_HOST, port: e.BANTU_SERVICE_PORT, advertiseHost: e.BANTU_SERVICE_ADVERTISE_HOST ?? e.BANTU_SERVICE_HOST, drainMs: e.BANTU_SERVICE_DRAIN_MS },
      redisUrl: e.REDIS_URL,
      redisPrefix: e.BANTU_REDIS_PREFIX,
      smtpUrl: e.SMTP_URL,
      mailFrom: e.MAIL_FROM,
      socketAuthTimeoutMs: e.BANTU_SOCKET_AUTH_TIMEOUT_MS,
      socketRecheckMs: e.BANTU_SOCKET_RECHECK_MS,
      eventRetentionHours: e.BANTU_EVENT_RETENTION_HOURS,
      exports: {
        dir: e.BANTU_EXPORT_DIR ? path.resolve(cwd, e.BANTU_EXPORT_DIR) : path.join(dataDir, 'exports'),
        maxRunning: e.BANTU_EXPORTS_MAX_RUNNING,
        maxBytes: e.BANTU_EXPORTS_MAX_BYTES,
        keep: e.BANTU_EXPORTS_KEEP,
        ttlHours: e.BANTU_EXPORTS_TTL_HOURS,
      },
      s3Blobs: e.S3_BUCKET ? s3Store(e, e.S3_ENDPOINT, e.S3_BUCKET) : undefined,
      s3Backups: e.S3_BACKUP_BUCKET ? s3Store(e, e.S3_BACKUP_ENDPOINT ?? e.S3_ENDPOINT, e.S3_BACKUP_BUCKET) : undefined,
    },
  };
}

function s3Store(e: Env, endpoint: string | undefined, bucketPrefix: string): S3StoreConfig {
  return {
    endpoint,
    region: e.S3_REGION,
    forcePathStyle: e.S3_FORCE_PATH_STYLE === undefined ? endpoint !== undefined : e.S3_FORCE_PATH_STYLE === 'true',
    accessKeyId: e.S3_ACCESS_KEY_ID as string,
    secretAccessKey: e.S3_SECRET_ACCESS_KEY as string,
    bucketPrefix,
  };
}

/** The S3 variables' checks across variables (on the raw strings, like the others). */
function s3Problems(raw: Record<string, unknown>, e: Env): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const has = (name: string) => typeof raw[name] === 'string';
  const anyBucket = has('S3_BUCKET') || has('S3_BACKUP_BUCKET');
  if (has('S3_ACCESS_KEY_ID') !== has('S3_SECRET_ACCESS_KEY')) {
    problems.push({ variable: has('S3_ACCESS_KEY_ID') ? 'S3_SECRET_ACCESS_KEY' : 'S3_ACCESS_KEY_ID', message: 'S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY go together' });
  } else if (anyBucket && !has('S3_ACCESS_KEY_ID')) {
    problems.push({ variable: 'S3_ACCESS_KEY_ID', message: 'S3_BUCKET and S3_BACKUP_BUCKET need S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY' });
  }
  if (has('S3_BACKUP_ENDPOINT') && !has('S3_BACKUP_BUCKET')) {
    problems.push({ variable: 'S3_BACKUP_ENDPOINT', message: 'is for S3_BACKUP_BUCKET, which is not set' });
  }
  // Each store's sweep deletes what its own records do not name: one bucket for both would lose blobs.
  if (has('S3_BUCKET') && raw.S3_BUCKET === raw.S3_BACKUP_BUCKET && (raw.S3_BACKUP_ENDPOINT ?? raw.S3_ENDPOINT) === raw.S3_ENDPOINT) {
    problems.push({ variable: 'S3_BACKUP_BUCKET', message: 'must differ from S3_BUCKET: files and backups cannot share buckets' });
  }
  if (anyBucket && typeof e.BANTU_MAX_UPLOAD_BYTES === 'number' && e.BANTU_MAX_UPLOAD_BYTES > S3_MAX_UPLOAD_BYTES) {
    problems.push({ variable: 'BANTU_MAX_UPLOAD_BYTES', message: `at most ${S3_MAX_UPLOAD_BYTES} (5 GiB) with S3: larger objects cannot be copied to their content address in one request` });
  }
  return problems;
}

/** Rows for the README's configuration table, straight from the schema. */
export function configTable(): Array<{ variable: string; default: string; description: string }> {
  return Object.entries(EnvSchema.properties).map(([variable, schema]) => ({
    variable,
    default: 'default' in schema && schema.default !== undefined ? String(schema.default) : '',
    description: String(schema.description ?? ''),
  }));
}

function isCidr(text: string): boolean {
  const [address = '', prefix, extra] = text.split('/');
  const family = isIP(address);
  if (family === 0 || extra !== undefined) return false;
  return prefix === undefined || (/^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128));
}
