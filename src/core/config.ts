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

export const EnvSchema = Type.Object({
  BANTU_DATA_DIR: Type.String({ minLength: 1, default: './data', description: 'Where embedded data lives (database, blobs, keys, mail)' }),
  BANTU_HOST: Type.String({ minLength: 1, default: '127.0.0.1', description: 'Address the HTTPS gateway listens on' }),
  BANTU_PORT: port('HTTPS port of the gateway (0 picks a free one)', 8443),
  BANTU_HTTP_PORT: Type.Optional(port('When set, a plain-HTTP port that answers every request with 403 https_required')),
  BANTU_TLS_CERT: Type.Optional(Type.String({ minLength: 1, description: 'PEM certificate file; without it a self-signed one is made under the data dir' })),
  BANTU_TLS_KEY: Type.Optional(Type.String({ minLength: 1, description: 'PEM private key file for BANTU_TLS_CERT' })),
  BANTU_OPERATOR_TOKEN: Type.Optional(Type.String({ minLength: 24, description: 'Platform operator secret (creates tenants); generated on first start when unset' })),
  BANTU_CORS_ORIGINS: Type.String({ default: '', description: 'Comma-separated origins allowed for browsers and Socket.IO clients' }),
  BANTU_MAX_UPLOAD_BYTES: positiveInt('Largest accepted upload, in bytes', 1024 ** 3),
  BANTU_TENANT_QUOTA_BYTES: Type.Optional(positiveInt('Storage quota per tenant and environment, in bytes (unset: unlimited)')),
  BANTU_LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((level) => Type.Literal(level)),
    { default: 'info', description: 'Log level' },
  ),
  BANTU_SECRET_KEY: Type.Optional(Type.String({ minLength: 32, description: 'Key that encrypts signing keys at rest; generated under the data dir when unset' })),
  BANTU_BACKUP_DIR: Type.Optional(Type.String({ minLength: 1, description: 'Backup store root (default <data dir>/backups)' })),
  BANTU_BACKUP_WORKER: Type.Union([Type.Literal('on'), Type.Literal('off')], {
    default: 'on',
    description: 'Run the backup worker in this process; off when `bantu serve backup` runs it elsewhere',
  }),
  BANTU_BACKUP_MAX_ATTEMPTS: positiveInt('Tries of a file event that can never be copied (bytes missing or not matching their checksum) before the backup sets it aside as a dead letter; store and database failures are retried until they pass', 5),
  BANTU_BACKUP_SWEEP_MINUTES: positiveInt('How often the backup enforces retention and removes unreferenced backup blobs', 60),
  BANTU_PUBLIC_URL: Type.Optional(url('Public base URL used in mailed links (default https://BANTU_HOST:BANTU_PORT)')),
  DATABASE_URL: Type.Optional(url('External PostgreSQL; replaces the embedded one. Through PgBouncer in transaction mode, set its `max_prepared_statements` (hot paths use prepared statements)')),
  NATS_URL: Type.Optional(url('NATS JetStream (distributed mode)')),
  REDIS_URL: Type.Optional(url('Redis: rate-limit counters (login throttling) shared by every process and kept across restarts; without it they live in memory')),
  BANTU_REDIS_PREFIX: Type.String({
    minLength: 1,
    maxLength: 64,
    default: 'bantu:',
    description: 'Prefix of every Redis key Bantu writes: give each installation sharing one Redis its own',
  }),
  SMTP_URL: Type.Optional(url('SMTP server for mail; without it mail is written as .eml files')),
  BANTU_SOCKET_AUTH_TIMEOUT_MS: positiveInt('A Socket.IO client that has not sent User_connect or Admin_connect by then is disconnected', 10_000),
  BANTU_SOCKET_RECHECK_MS: positiveInt('How often a live subscription re-checks its credential (revoked keys, deleted users end it)', 30_000),
  BANTU_EVENT_RETENTION_HOURS: positiveInt('How long file events stay replayable with `since` (at least 24 h in production)', 72),
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
  corsOrigins: string[];
  maxUploadBytes: number;
  tenantQuotaBytes?: number;
  logLevel: string;
  secretKey?: string;
  backupDir: string;
  backupWorker: boolean;
  backupMaxAttempts: number;
  backupSweepMinutes: number;
  publicUrl?: string;
  databaseUrl?: string;
  natsUrl?: string;
  redisUrl?: string;
  redisPrefix: string;
  smtpUrl?: string;
  mailFrom: string;
  socketAuthTimeoutMs: number;
  socketRecheckMs: number;
  eventRetentionHours: number;
}

export interface ConfigProblem {
  variable: string;
  message: string;
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
  const corsOrigins = String(raw.BANTU_CORS_ORIGINS ?? '').split(',').map((origin) => origin.trim()).filter(Boolean);
  for (const origin of corsOrigins) {
    if (origin !== '*' && !/^https?:\/\/[^/\s]+$/.test(origin)) {
      problems.push({ variable: 'BANTU_CORS_ORIGINS', message: `not an origin (scheme://host[:port]): ${origin}` });
    }
  }
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
      corsOrigins,
      maxUploadBytes: e.BANTU_MAX_UPLOAD_BYTES,
      tenantQuotaBytes: e.BANTU_TENANT_QUOTA_BYTES,
      logLevel: e.BANTU_LOG_LEVEL,
      secretKey: e.BANTU_SECRET_KEY,
      backupDir: e.BANTU_BACKUP_DIR ? path.resolve(cwd, e.BANTU_BACKUP_DIR) : path.join(dataDir, 'backups'),
      backupWorker: e.BANTU_BACKUP_WORKER === 'on',
      backupMaxAttempts: e.BANTU_BACKUP_MAX_ATTEMPTS,
      backupSweepMinutes: e.BANTU_BACKUP_SWEEP_MINUTES,
      publicUrl: e.BANTU_PUBLIC_URL,
      databaseUrl: e.DATABASE_URL,
      natsUrl: e.NATS_URL,
      redisUrl: e.REDIS_URL,
      redisPrefix: e.BANTU_REDIS_PREFIX,
      smtpUrl: e.SMTP_URL,
      mailFrom: e.MAIL_FROM,
      socketAuthTimeoutMs: e.BANTU_SOCKET_AUTH_TIMEOUT_MS,
      socketRecheckMs: e.BANTU_SOCKET_RECHECK_MS,
      eventRetentionHours: e.BANTU_EVENT_RETENTION_HOURS,
    },
  };
}

/** Rows for the README's configuration table, straight from the schema. */
export function configTable(): Array<{ variable: string; default: string; description: string }> {
  return Object.entries(EnvSchema.properties).map(([variable, schema]) => ({
    variable,
    default: 'default' in schema && schema.default !== undefined ? String(schema.default) : '',
    description: String(schema.description ?? ''),
  }));
}
