import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse, stringify } from 'yaml';
import { SERVICE_NAMES } from '../src/platform/catalogue.ts';
import { metricsExportedBy } from './helpers/exported-metrics.ts';
import { uploadRaw } from './helpers/files.ts';
import { metricNames, PROMETHEUS_SERIES } from './helpers/promql.ts';
import { makeTempDir, startServer, type TestServer } from './helpers/server.ts';

/**
 * deploy/prometheus with Debian's prometheus package (.ci/run installs it when missing):
 * promtool checks the config and the rules and runs the rules' unit tests; a real Prometheus
 * scrapes a running Bantu over HTTPS with the shipped gateway job; every metric the alert
 * rules read is one a running Bantu exports (the Grafana dashboards: test/deploy-grafana.test.ts).
 */
const ROOT = path.join(import.meta.dirname, '..');
const PROMETHEUS = path.join(ROOT, 'deploy', 'prometheus');
const RULES = path.join(PROMETHEUS, 'rules', 'bantu.rules.yml');

function promtool(...args: string[]) {
  const result = spawnSync('promtool', args, { cwd: PROMETHEUS, encoding: 'utf8' });
  assert.equal(result.error, undefined, 'promtool is on the PATH (.ci/run installs Debian\'s prometheus package when it is missing)');
  return result;
}

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
}
const rules = (): Rule[] => (parse(fs.readFileSync(RULES, 'utf8')) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap((g) => g.rules);

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });

/** Asks `probe` until it returns a value (not undefined), for up to a minute: waiting, not timing. */
async function eventually<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 60_000;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`${what}: not within a minute (${String(last ?? 'no answer')})`);
}

describe('deploy/prometheus with promtool', () => {
  it('the shipped static config and its rule files are valid', () => {
    const result = promtool('check', 'config', 'prometheus.yml');
    assert.equal(result.status, 0, result.stdout + result.stderr);
    assert.match(result.stdout, /SUCCESS: 1 rule files found/);
  });

  it('every rule passes `promtool check rules`, and every alert has a `promtool test rules` case', () => {
    const check = promtool('check', 'rules', RULES);
    assert.equal(check.status, 0, check.stdout + check.stderr);
    const result = promtool('test', 'rules', path.join('rules', 'bantu.rules.test.yml'));
    assert.equal(result.status, 0, result.stdout + result.stderr);
    const tests = fs.readFileSync(path.join(PROMETHEUS, 'rules', 'bantu.rules.test.yml'), 'utf8');
    const untested = rules().filter((r) => r.alert && !new RegExp(`alertname: ${r.alert}\\b`).test(tests));
    assert.deepEqual(untested.map((r) => r.alert), []);
    for (const alert of ['BantuBackupLagging', 'BantuDeadLetters', 'BantuHigh5xxRate', 'BantuNotReady', 'BantuNoLiveInstance', 'BantuCertificateExpiresSoon']) {
      assert.ok(rules().some((r) => r.alert === alert), `${alert} exists`);
    }
  });

  it('`promtool test rules` fails when a rule stops firing (the tests are not vacuous)', async () => {
    const dir = await makeTempDir('bantu-rules-');
    try {
      const broken = fs.readFileSync(RULES, 'utf8').replace('max by (environment) (backup_lag_seconds) > 300', 'max by (environment) (backup_lag_seconds) > 3000');
      fs.writeFileSync(path.join(dir, 'bantu.rules.yml'), broken);
      fs.copyFileSync(path.join(PROMETHEUS, 'rules', 'bantu.rules.test.yml'), path.join(dir, 'bantu.rules.test.yml'));
      const result = spawnSync('promtool', ['test', 'rules', 'bantu.rules.test.yml'], { cwd: dir, encoding: 'utf8' });
      assert.equal(result.status, 1);
      assert.match(result.stdout + result.stderr, /BantuBackupLagging/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('both scrape configs have a job for every service of the catalogue', () => {
    const statics = parse(fs.readFileSync(path.join(PROMETHEUS, 'prometheus.yml'), 'utf8')) as { scrape_configs: Array<{ job_name: string }> };
    assert.deepEqual(statics.scrape_configs.map((c) => c.job_name).sort(), SERVICE_NAMES.map((name) => `bantu-${name}`).sort());
    // Debian's promtool is built without Kubernetes discovery: the relabelling is checked here instead.
    type Relabel = { source_labels?: string[]; regex?: string; action?: string; target_label?: string; replacement?: string };
    const k8s = parse(fs.readFileSync(path.join(PROMETHEUS, 'prometheus-kubernetes.yml'), 'utf8')) as { scrape_configs: Array<{ job_name: string; relabel_configs: Relabel[] }> };
    for (const name of SERVICE_NAMES) {
      const jobs = k8s.scrape_configs.filter((config) => {
        const keep = config.relabel_configs.find((r) => r.action === 'keep');
        return keep?.regex && new RegExp(`^(?:${keep.regex})$`).test(`bantu;${name}`);
      });
      assert.equal(jobs.length, 1, `${name}: one Kubernetes job keeps its endpoints`);
      const job = jobs[0] as { job_name: string; relabel_configs: Relabel[] };
      const rename = job.relabel_configs.find((r) => r.target_label === 'job');
      const finalJob = rename ? (rename.replacement ?? '$1').replace('$1', name) : job.job_name;
      assert.equal(finalJob, `bantu-${name}`);
    }
  });
});

describe('Prometheus against a running Bantu', () => {
  let server: TestServer;
  let exported: Set<string>;
  before(async () => {
    server = await startServer({ BANTU_DATABASE_POOL_SIZE: '7' });
    exported = await metricsExportedBy(server);
  });
  after(async () => server?.close());

  it('exports the metrics the operator needs', () => {
    for (const name of [
      'http_request_duration_seconds_count',
      'backup_lag_seconds',
      'bantu_bus_lag_seconds',
      'bantu_bus_dead_letters',
      'bantu_db_pool_connections',
      'bantu_readiness_dependency_up',
      'bantu_tls_certificate_expiry_timestamp_seconds',
      'bantu_notifications_sockets',
      'bantu_gateway_service_instances',
    ]) {
      assert.ok(exported.has(name), `${name} is exported`);
    }
  });

  it('reports what it measures, and no label carries an id', async () => {
    // Some files first, so that any id a label could carry exists.
    for (const name of ['a.txt', 'b.txt']) assert.equal((await uploadRaw(server, server.keys.live.account_key, 'x', { name })).status, 201);
    const text = (await server.request('GET', '/metrics')).text;
    const series = [...text.matchAll(/^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (\S+)$/gm)].map(([, name, labels, value]) => ({
      name: name as string,
      labels: Object.fromEntries([...(labels as string).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map(([, k, v]) => [k, v])) as Record<string, string>,
      value: Number(value),
    }));
    const one = (name: string, labels: Record<string, string>) => series.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
    assert.equal(one('bantu_db_pool_connections', { database: 'live', state: 'max' }), 7, 'the configured pool size');
    assert.equal(one('bantu_readiness_dependency_up', { dependency: 'database' }), 1);
    assert.equal(one('bantu_bus_dead_letters', { consumer: 'backup', environment: 'live' }), 0);
    assert.ok((one('bantu_tls_certificate_expiry_timestamp_seconds', {}) ?? 0) > Date.now() / 1000, 'the certificate expires in the future');
    const id = /[0-9a-f]{8}-[0-9a-f]{4}-|[0-9A-Za-z_-]{20,}/;
    const leaks = series.flatMap((s) => Object.entries(s.labels).filter(([k, v]) => k !== 'route' && id.test(v)).map(([k, v]) => `${s.name}{${k}="${v}"}`));
    assert.deepEqual(leaks, []);
    // Routes are the patterns, never a path with an id in it.
    const routes = new Set(series.filter((s) => s.labels.route).map((s) => s.labels.route as string));
    assert.deepEqual([...routes].filter((route) => id.test(route.replace(/:\w+/g, ''))), []);
  });

  it('every metric an alert rule reads is one Bantu exports', () => {
    const unknown = rules().flatMap((rule) => [...metricNames(rule.expr)].filter((n) => !exported.has(n) && !PROMETHEUS_SERIES.has(n)).map((n) => `${rule.alert}: ${n}`));
    assert.deepEqual(unknown, []);
    // The check itself: a name Bantu does not export is reported.
    assert.deepEqual([...metricNames('rate(bantu_no_such_metric_total{service="files"}[5m]) > 0')].filter((n) => !exported.has(n)), ['bantu_no_such_metric_total']);
  });

  it('Prometheus scrapes it over HTTPS with the shipped gateway job, and loads the rules', async () => {
    const dir = await makeTempDir('bantu-prometheus-');
    const port = await freePort();
    const shipped = parse(fs.readFileSync(path.join(PROMETHEUS, 'prometheus.yml'), 'utf8')) as {
      global: Record<string, string>;
      scrape_configs: Array<{ job_name: string; static_configs: Array<{ targets: string[] }> }>;
    };
    // The shipped job as it is, pointed at this server; a short interval so the test need not wait 15 s.
    const gateway = shipped.scrape_configs.find((c) => c.job_name === 'bantu-gateway');
    assert.ok(gateway);
    gateway.static_configs = [{ targets: [new URL(server.url).host] }];
    const config = { global: { ...shipped.global, scrape_interval: '1s', evaluation_interval: '1s' }, rule_files: [RULES], scrape_configs: [gateway] };
    fs.writeFileSync(path.join(dir, 'prometheus.yml'), stringify(config));
    let prometheus: ChildProcess | undefined;
    let log = '';
    try {
      prometheus = spawn('prometheus', [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      prometheus.stderr?.on('data', (chunk) => {
        log += chunk;
      });
      const api = async (pathname: string) => {
        const response = await fetch(`http://127.0.0.1:${port}${pathname}`);
        return response.ok ? ((await response.json()) as { data: unknown }).data : undefined;
      };
      type Target = { labels: { job: string }; health: string; scrapeUrl: string; lastError: string };
      const target = await eventually('the gateway target up', async () => {
        const data = (await api('/api/v1/targets')) as { activeTargets: Target[] } | undefined;
        return data?.activeTargets.find((t) => t.labels.job === 'bantu-gateway' && t.health === 'up');
      }).catch((error) => assert.fail(`${error.message}\n${log.slice(-2000)}`));
      assert.equal(target.scrapeUrl, `${server.url}/metrics`);
      assert.match(target.scrapeUrl, /^https:/);

      type Sample = { metric: Record<string, string>; value: [number, string] };
      const query = encodeURIComponent('bantu_readiness_dependency_up{job="bantu-gateway", dependency="database"}');
      const [sample] = await eventually('a Bantu series', async () => {
        const data = (await api(`/api/v1/query?query=${query}`)) as { result: Sample[] } | undefined;
        return data?.result.length ? data.result : undefined;
      });
      assert.equal(sample?.metric.service, 'bantu');
      assert.equal(sample?.value[1], '1');

      const loaded = (await api('/api/v1/rules')) as { groups: Array<{ rules: Array<{ name: string; health: string }> }> };
      const names = loaded.groups.flatMap((g) => g.rules.map((r) => r.name));
      assert.deepEqual(names.sort(), rules().map((r) => r.alert ?? r.record).sort());
    } finally {
      if (prometheus?.exitCode === null) {
        const exited = new Promise((resolve) => prometheus?.once('exit', resolve));
        prometheus.kill('SIGTERM');
        await exited;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
