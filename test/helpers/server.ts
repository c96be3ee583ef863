import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { Agent, type Dispatcher, request } from 'undici';
import { dropDatabases } from '../../src/adapters/db/pg.ts';
import { type App, createApp, type StartedApp } from '../../src/app.ts';
import { loadConfig } from '../../src/core/config.ts';
import { acquireS3, type ServerS3 } from './s3-shape.ts';
import { distributed, s3 } from './shape.ts';

/**
 * Starts a real Bantu in-process on a random port with a temporary data dir, and gives a
 * client that speaks HTTPS to it, trusting only its self-signed certificate.
 *
 * With BANTU_TEST_DATABASE_URL set (npm run test:machine), the server uses that external
 * PostgreSQL with databases of its own, dropped at the end; otherwise embedded PostgreSQL.
 * With BANTU_TEST_SHAPE=distributed (npm run test:distributed), a deployment of `bantu serve`
 * processes instead, behind the same interface (test/helpers/distributed-server.ts).
 * With BANTU_TEST_SHAPE=s3 (npm run test:s3), files and backups go to S3 buckets of the
 * server's own on the file's s3rver (test/helpers/s3-shape.ts), unless `env` names S3_BUCKET.
 */
export interface TestServer {
  app: App;
  started: StartedApp;
  url: string;
  dataDir: string;
  operatorToken: string;
  /** The installation's BANTU_SECRET_KEY (which seals the JWT signing keys in the databases). */
  secretKey: string;
  /** The default tenant's keys. */
  keys: { live: { account_key: string; application_key: string }; test: { account_key: string; application_key: string } };
  ca: string;
  /** In the S3 shape: where its files and backups are. */
  s3?: ServerS3;
  http: Dispatcher;
  request(method: string, pathname: string, options?: RequestOptions): Promise<TestResponse>;
  close(): Promise<void>;
}

export interface RequestOptions {
  /** A key, token or operator token, sent as Bearer. */
  auth?: string;
  /** A key, sent as HTTP Basic user name with an empty password. */
  basic?: string;
  json?: unknown;
  body?: string | Buffer;
  headers?: Record<string, string>;
}

export interface TestResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON
  json: any;
}

export async function makeTempDir(prefix = 'bantu-test-'): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  // When tests run as root, the embedded PostgreSQL runs as "postgres" and must enter it.
  await fs.chmod(dir, 0o755);
  return dir;
}

export interface StartOptions {
  /** Where the server's JSON log lines go (default stdout); for tests that read the log. */
  logDestination?: pino.DestinationStream;
  /**
   * Another process of that server's installation (give both the same DATABASE_URL,
   * BANTU_SECRET_KEY and BANTU_PUBLIC_URL): the default tenant exists already, so its keys are
   * that server's. Each keeps its own data dir (one server per data dir).
   */
  sameInstallationAs?: TestServer;
}

export async function startServer(env: Record<string, string> = {}, options: StartOptions = {}): Promise<TestServer> {
  if (distributed) return (await import('./distributed-server.ts')).startDistributedServer(env, options);
  const storage = s3 && env.S3_BUCKET === undefined ? await acquireS3(options.sameInstallationAs?.s3) : undefined;
  try {
    return await startInProcess({ ...storage?.env, ...env }, options, storage);
  } catch (error) {
    await storage?.release();
    throw error;
  }
}

/**
 * The pool of a server on the machine PostgreSQL (100 connections, shared by the two test
 * files that run at once): at the default 10, a server could hold 25 (and its listeners), and
 * beside a distributed deployment's nine processes the server ran out ("too many clients").
 * At 5: 13 at most, and writers beyond that wait for a connection, as in production.
 */
const SHARED_POSTGRES_POOL_SIZE = '5';
/**
 * How long an unused connection stays open on the machine PostgreSQL, for every server and
 * deployment of the tests: at the default 30 s, most connections held were idle ones left from
 * the last burst (two deployments side by side held up to 98 of the 100).
 */
export const SHARED_POSTGRES_IDLE_MS = 1000;

async function startInProcess(env: Record<string, string>, options: StartOptions, storage: ServerS3 | undefined): Promise<TestServer> {
  const dataDir = await makeTempDir();
  const externalBase = process.env.BANTU_TEST_DATABASE_URL;
  let databaseUrl: string | undefined;
  if (externalBase) {
    const url = new URL(externalBase);
    url.pathname = `/bantu_t_${randomBytes(5).toString('hex')}`;
    databaseUrl = url.toString();
  }
  const result = loadConfig({
    BANTU_DATA_DIR: dataDir,
    BANTU_PORT: '0',
    BANTU_LOG_LEVEL: process.env.BANTU_TEST_LOG_LEVEL ?? 'silent',
    ...(databaseUrl ? { DATABASE_URL: databaseUrl, BANTU_DATABASE_POOL_SIZE: SHARED_POSTGRES_POOL_SIZE, BANTU_DATABASE_IDLE_MS: String(SHARED_POSTGRES_IDLE_MS) } : {}),
    ...env,
  });
  if (!result.ok) throw new Error(`bad test config: ${JSON.stringify(result.problems)}`);
  const app = createApp(result.config, options.logDestination ? pino({ level: result.config.logLevel }, options.logDestination) : pino({ level: result.config.logLevel }));
  let started: StartedApp;
  try {
    started = await app.start();
  } catch (error) {
    await app.close();
    throw error;
  }
  const ca = await fs.readFile(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
  const http = new Agent({ connect: { ca }, keepAliveTimeout: 1000 });
  const operatorToken = (await fs.readFile(path.join(dataDir, 'secrets', 'operator-token'), 'utf8')).trim();
  const secretKey = result.config.secretKey ?? (await fs.readFile(path.join(dataDir, 'secrets', 'secret-key'), 'utf8')).trim();
  const defaults = options.sameInstallationAs ?? JSON.parse(await fs.readFile(path.join(dataDir, 'secrets', 'default-tenant.json'), 'utf8'));

  const server: TestServer = {
    app,
    started,
    url: started.url,
    dataDir,
    operatorToken,
    secretKey,
    keys: defaults.keys,
    ca,
    ...(storage ? { s3: storage } : {}),
    http,
    request: (method, pathname, options) => requestWith(http, started.url, method, pathname, options),
    async close() {
      await http.close();
      await app.close();
      if (databaseUrl) await dropDatabases(databaseUrl);
      await fs.rm(dataDir, { recursive: true, force: true });
      await storage?.release();
    },
  };
  return server;
}

/** One request with the test conventions: Bearer or Basic credentials, a JSON body, the answer read whole. */
export async function requestWith(dispatcher: Dispatcher, baseUrl: string, method: string, pathname: string, options: RequestOptions = {}): Promise<TestResponse> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.auth) headers.authorization = `Bearer ${options.auth}`;
  if (options.basic) headers.authorization = `Basic ${Buffer.from(`${options.basic}:`).toString('base64')}`;
  let body = options.body;
  if (options.json !== undefined) {
    body = JSON.stringify(options.json);
    headers['content-type'] ??= 'application/json';
  }
  const response = await request(`${baseUrl}${pathname}`, { method: method as Dispatcher.HttpMethod, headers, body, dispatcher });
  const text = await response.body.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: response.statusCode, headers: response.headers, text, json };
}
