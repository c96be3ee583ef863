import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { describe, it } from 'node:test';
import { generate } from 'selfsigned';
import { parse } from 'yaml';
import { SERVICE_NAMES } from '../src/platform/catalogue.ts';

/**
 * Static checks of the container files (no Docker engine here): compose.yaml runs every
 * service of the catalogue as its own healthy-checked container, with the infrastructure
 * beside it; the Dockerfile builds the image they share; the image's health probe answers
 * for each command. Each check of compose.yaml is also run on a broken copy, to show it fails.
 */
const ROOT = path.join(import.meta.dirname, '..');
const read = (file: string) => fs.readFileSync(path.join(ROOT, file), 'utf8');

interface ComposeService {
  image?: string;
  build?: unknown;
  command?: string | string[];
  environment?: Record<string, string | number | null> | string[];
  healthcheck?: { test?: string | string[]; disable?: boolean };
  ports?: unknown[];
  depends_on?: string[] | Record<string, { condition?: string }>;
  deploy?: { replicas?: number };
  volumes?: Array<string | { source?: string; target?: string }>;
}
interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

const INFRASTRUCTURE = ['postgres', 'nats', 'redis'];

/** `merge`: compose.yaml shares its Bantu parts through `<<:` merge keys, as Compose reads them. */
const loadCompose = (): ComposeFile => parse(read('compose.yaml'), { merge: true });
const envExampleNames = () => new Set([...read('.env.example').matchAll(/^([A-Z][A-Z0-9_]*)=/gm)].map((m) => m[1] as string));

const words = (value: string | string[] | undefined) => (Array.isArray(value) ? value : (value ?? '').split(/\s+/).filter(Boolean));
function environmentOf(service: ComposeService): Record<string, string> {
  const env = service.environment ?? {};
  if (Array.isArray(env)) return Object.fromEntries(env.map((entry) => [entry.split('=')[0], entry.slice(entry.indexOf('=') + 1)]));
  return Object.fromEntries(Object.entries(env).map(([name, value]) => [name, String(value ?? '')]));
}
/** The Bantu service a container runs (`serve <name>`), or undefined for the infrastructure. */
function servedBy(service: ComposeService): string | undefined {
  const [verb, name, ...rest] = words(service.command);
  return verb === 'serve' && rest.length === 0 ? name : undefined;
}
const hasHealthcheck = (service: ComposeService) => !service.healthcheck?.disable && words(service.healthcheck?.test).length > 0;
const dependencyNames = (service: ComposeService) => (Array.isArray(service.depends_on) ? service.depends_on : Object.keys(service.depends_on ?? {}));

/** Every `${VAR}` (with or without `:-default` / `:?error`) in the file's values; comments are not values. */
function variablesUsed(node: unknown, found = new Set<string>()): Set<string> {
  if (typeof node === 'string') for (const match of node.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)/g)) found.add(match[1] as string);
  else if (Array.isArray(node)) for (const item of node) variablesUsed(item, found);
  else if (node && typeof node === 'object') for (const value of Object.values(node)) variablesUsed(value, found);
  return found;
}

function serviceProblems(compose: ComposeFile): string[] {
  const problems: string[] = [];
  const containers = Object.entries(compose.services);
  for (const name of SERVICE_NAMES) {
    const instances = containers.filter(([, s]) => servedBy(s) === name).reduce((sum, [, s]) => sum + (s.deploy?.replicas ?? 1), 0);
    const wanted = name === 'files' ? 2 : 1;
    if (instances < wanted) problems.push(`${name}: ${instances} instance(s) run "serve ${name}", want ${wanted}`);
  }
  const bantu = containers.filter(([, s]) => servedBy(s) !== undefined);
  for (const [container, service] of bantu) {
    const served = servedBy(service) as string;
    if (!(SERVICE_NAMES as readonly string[]).includes(served)) problems.push(`${container}: serves "${served}", not in SERVICE_NAMES`);
    if (!hasHealthcheck(service) || !/\/(healthz|readyz)\b/.test(words(service.healthcheck?.test).join(' '))) {
      problems.push(`${container}: no healthcheck on /healthz or /readyz`);
    }
    if (service.build === undefined || service.image !== bantu[0]?.[1].image) problems.push(`${container}: not built as the one shared image`);
    const env = environmentOf(service);
    for (const variable of ['DATABASE_URL', 'NATS_URL', 'REDIS_URL']) if (!env[variable]) problems.push(`${container}: no ${variable}`);
    for (const secret of ['BANTU_SECRET_KEY', 'BANTU_OPERATOR_TOKEN']) {
      if (!new RegExp(`^\\$\\{${secret}:\\?`).test(env[secret] ?? '')) problems.push(`${container}: ${secret} is not the required \${${secret}:?...}`);
    }
    if (served !== 'gateway' && !(env.BANTU_SERVICE_HOST === '0.0.0.0' && Number(env.BANTU_SERVICE_PORT) > 0)) {
      problems.push(`${container}: needs BANTU_SERVICE_HOST 0.0.0.0 and a fixed BANTU_SERVICE_PORT (the gateway and the healthcheck reach it there)`);
    }
    const advertised = env.BANTU_SERVICE_ADVERTISE_HOST;
    if (advertised !== undefined && !(advertised in compose.services)) problems.push(`${container}: advertises "${advertised}", no such service`);
  }
  return problems;
}

function infrastructureProblems(compose: ComposeFile): string[] {
  const problems: string[] = [];
  for (const name of INFRASTRUCTURE) {
    const service = compose.services[name];
    if (!service) problems.push(`${name}: missing`);
    else if (!hasHealthcheck(service)) problems.push(`${name}: no healthcheck`);
  }
  const nats = words(compose.services.nats?.command);
  if (compose.services.nats && !(nats.includes('-js') && nats.includes('-sd'))) problems.push('nats: JetStream (-js) with a store dir (-sd) is off');
  for (const [container, service] of Object.entries(compose.services)) {
    for (const dependency of dependencyNames(service)) if (!(dependency in compose.services)) problems.push(`${container}: depends on "${dependency}", no such service`);
    if (servedBy(service) === undefined) continue;
    const conditions = Array.isArray(service.depends_on) ? {} : (service.depends_on ?? {});
    for (const name of INFRASTRUCTURE) {
      if (conditions[name]?.condition !== 'service_healthy') problems.push(`${container}: does not wait for ${name} to be healthy`);
    }
  }
  return problems;
}

function exposureProblems(compose: ComposeFile): string[] {
  const problems: string[] = [];
  for (const [container, service] of Object.entries(compose.services)) {
    const publishes = (service.ports ?? []).length > 0;
    if (publishes && servedBy(service) !== 'gateway') problems.push(`${container}: publishes a port; only the gateway may`);
    if (!publishes && servedBy(service) === 'gateway') problems.push(`${container}: the gateway publishes no port`);
  }
  const gatewayPorts = Object.values(compose.services).filter((s) => servedBy(s) === 'gateway').flatMap((s) => (s.ports ?? []).map(String));
  if (gatewayPorts.length > 0 && !gatewayPorts.some((port) => /(^|:)8443$/.test(port))) problems.push('gateway: 8443 is not published');
  return problems;
}

/** Files instances and backup share one blob volume, mounted where BANTU_BLOB_DIR says; backup mounts BANTU_BACKUP_DIR too. */
function storageProblems(compose: ComposeFile): string[] {
  const problems: string[] = [];
  const mounts = (service: ComposeService) =>
    new Map((service.volumes ?? []).map((v) => (typeof v === 'string' ? [v.split(':')[1], v.split(':')[0]] : [v.target, v.source])));
  const blobVolumes = new Set<string>();
  for (const [container, service] of Object.entries(compose.services)) {
    const served = servedBy(service);
    if (served !== 'files' && served !== 'backup') continue;
    const env = environmentOf(service);
    const wanted = served === 'backup' ? ['BANTU_BLOB_DIR', 'BANTU_BACKUP_DIR'] : ['BANTU_BLOB_DIR'];
    for (const variable of wanted) {
      const source = env[variable] ? mounts(service).get(env[variable]) : undefined;
      if (!source || !(source in (compose.volumes ?? {}))) problems.push(`${container}: ${variable} is not on a named volume`);
      if (variable === 'BANTU_BLOB_DIR') blobVolumes.add(String(source));
    }
  }
  if (blobVolumes.size > 1) problems.push(`files and backup mount different blob volumes: ${[...blobVolumes].join(', ')}`);
  return problems;
}

function variableProblems(compose: ComposeFile, listed: Set<string>): string[] {
  return [...variablesUsed(compose)].filter((name) => !listed.has(name)).map((name) => `\${${name}} is not listed in .env.example`);
}

const composeProblems = (compose: ComposeFile, listed = envExampleNames()) => [
  ...serviceProblems(compose),
  ...infrastructureProblems(compose),
  ...exposureProblems(compose),
  ...storageProblems(compose),
  ...variableProblems(compose, listed),
];

describe('compose.yaml', () => {
  it('runs every service of the catalogue, healthy-checked, beside PostgreSQL, NATS and Redis', () => {
    assert.deepEqual(composeProblems(loadCompose()), []);
  });

  it('runs two files instances', () => {
    const files = Object.values(loadCompose().services).filter((s) => servedBy(s) === 'files');
    assert.equal(files.reduce((sum, s) => sum + (s.deploy?.replicas ?? 1), 0), 2);
  });

  // Each broken copy must be reported, so none of the checks above passes by accident.
  const service = (compose: ComposeFile, name: string) => compose.services[name] as ComposeService;
  const breakages: Array<[string, (compose: ComposeFile) => void, RegExp]> = [
    ['a service removed', (c) => delete c.services.identity, /identity: 0 instance/],
    ['one files instance left', (c) => delete c.services['files-2'], /files: 1 instance/],
    ['a healthcheck removed', (c) => delete service(c, 'notifications').healthcheck, /notifications: no healthcheck/],
    ['a healthcheck on another path', (c) => (service(c, 'backup').healthcheck = { test: ['CMD', 'true'] }), /backup: no healthcheck on/],
    ['the infrastructure unchecked', (c) => delete service(c, 'redis').healthcheck, /redis: no healthcheck/],
    ['a service port published', (c) => (service(c, 'identity').ports = ['8080:8080']), /identity: publishes a port/],
    ['an unknown dependency', (c) => (service(c, 'backup').depends_on = { minio: {} }), /backup: depends on "minio"/],
    ['a secret with a default', (c) => (service(c, 'gateway').environment = { ...environmentOf(service(c, 'gateway')), BANTU_SECRET_KEY: 'x'.repeat(32) }), /gateway: BANTU_SECRET_KEY/],
    ['a variable not in .env.example', (c) => (service(c, 'redis').image = `redis:\${REDIS_TAG}`), /REDIS_TAG/],
    ['backup without the blob volume', (c) => (service(c, 'backup').volumes = ['backups:/var/lib/bantu/backups']), /backup: BANTU_BLOB_DIR/],
  ];
  for (const [what, breakIt, expected] of breakages) {
    it(`reports ${what}`, () => {
      const compose = loadCompose();
      breakIt(compose);
      assert.match(composeProblems(compose).join('\n'), expected);
    });
  }

  it('accepts the other shape of two files instances: one service with deploy.replicas 2', () => {
    const compose = loadCompose();
    const { 'files-1': files, 'files-2': _second, ...others } = compose.services;
    compose.services = { ...others, files: { ...(files as ComposeService), deploy: { replicas: 2 } } };
    for (const service of Object.values(compose.services)) {
      const env = environmentOf(service);
      if (env.BANTU_SERVICE_ADVERTISE_HOST === 'files-1') service.environment = { ...env, BANTU_SERVICE_ADVERTISE_HOST: 'files' };
    }
    assert.deepEqual(composeProblems(compose), []);
  });
});

/** The Dockerfile's instructions: comments dropped, continuation lines joined. */
function dockerfileInstructions(text: string): Array<{ keyword: string; args: string }> {
  return text
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith('#'))
    .map((line) => {
      const [keyword = '', ...rest] = line.split(/\s+/);
      return { keyword: keyword.toUpperCase(), args: rest.join(' ') };
    });
}

describe('Dockerfile', () => {
  const all = dockerfileInstructions(read('Dockerfile'));
  const stages = all.filter((i) => i.keyword === 'FROM').length;
  const runtime = all.slice(all.map((i) => i.keyword).lastIndexOf('FROM'));
  const last = (keyword: string) => runtime.filter((i) => i.keyword === keyword).at(-1)?.args;

  it('is multi-stage, installs production dependencies only, and tsx is one of them', () => {
    assert.ok(stages >= 2, `${stages} stage(s)`);
    assert.ok(all.some((i) => i.keyword === 'RUN' && /npm ci --omit=dev/.test(i.args)));
    // bin/bantu.js runs the sources through tsx: with tsx a dev dependency, the image could not start.
    assert.ok(JSON.parse(read('package.json')).dependencies.tsx);
  });

  it('runs bin/bantu.js as a non-root user, `start` by default', () => {
    assert.deepEqual(JSON.parse(last('ENTRYPOINT') ?? 'null'), ['node', 'bin/bantu.js']);
    assert.deepEqual(JSON.parse(last('CMD') ?? 'null'), ['start']);
    const user = last('USER');
    assert.ok(user && !/^(root|0)(:|$)/.test(user), `USER ${user}`);
  });

  it('has a HEALTHCHECK on /healthz or /readyz', () => {
    const healthcheck = last('HEALTHCHECK');
    assert.ok(healthcheck && !/^NONE$/i.test(healthcheck));
    assert.match(healthcheck, /\/(healthz|readyz)\b/);
  });

  it('copies only files that exist and that .dockerignore lets through', () => {
    const ignored = read('.dockerignore').split('\n').map((line) => line.trim()).filter((line) => line && !line.startsWith('#'));
    const sources = all
      .filter((i) => i.keyword === 'COPY' && !i.args.includes('--from='))
      .flatMap((i) => i.args.split(/\s+/).filter((word) => !word.startsWith('--')).slice(0, -1));
    assert.ok(sources.includes('scripts/container-healthcheck.mjs'), 'the health probe is in the image');
    for (const source of sources) {
      assert.ok(fs.existsSync(path.join(ROOT, source)), `${source} exists`);
      assert.ok(!ignored.some((pattern) => source === pattern || source.startsWith(`${pattern}/`)), `${source} is not in .dockerignore`);
    }
  });
});

describe('the container health probe (scripts/container-healthcheck.mjs)', () => {
  const probe = (args: string[], env: Record<string, string>) =>
    new Promise<number | null>((resolve) => {
      const child = spawn(process.execPath, [path.join(ROOT, 'scripts', 'container-healthcheck.mjs'), ...args], {
        env: { PATH: process.env.PATH ?? '', ...env },
        stdio: 'ignore',
      });
      child.on('exit', (code) => resolve(code));
    });
  const handler: http.RequestListener = (request, response) => {
    response.writeHead(request.url === '/healthz' ? 200 : 503).end();
  };
  const listen = async (server: http.Server | https.Server) => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return String((server.address() as AddressInfo).port);
  };
  /** A port nothing listens on (just freed). */
  const closedPort = async () => {
    const server = http.createServer();
    const port = await listen(server);
    await new Promise((resolve) => server.close(resolve));
    return port;
  };

  it('passes on a service port (plain HTTP) answering 200, fails on another status', async () => {
    const server = http.createServer(handler);
    const env = { BANTU_SERVICE_PORT: await listen(server), BANTU_PORT: await closedPort() };
    try {
      assert.equal(await probe([], env), 0);
      assert.equal(await probe(['/readyz'], env), 1);
    } finally {
      server.close();
    }
  });

  it('passes on the gateway port (HTTPS, self-signed) when no service port answers', async () => {
    const pems = await generate([{ name: 'commonName', value: 'bantu.example' }], { keySize: 2048 });
    const server = https.createServer({ cert: pems.cert, key: pems.private }, handler);
    const env = { BANTU_SERVICE_PORT: await closedPort(), BANTU_PORT: await listen(server) };
    try {
      assert.equal(await probe(['/healthz'], env), 0);
    } finally {
      server.close();
    }
  });

  it('fails when nothing answers', async () => {
    assert.equal(await probe(['/healthz'], { BANTU_SERVICE_PORT: await closedPort(), BANTU_PORT: await closedPort() }), 1);
  });
});
