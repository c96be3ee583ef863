import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse, stringify } from 'yaml';
import { metricsExportedBy } from './helpers/exported-metrics.ts';
import { metricNames, PROMETHEUS_SERIES } from './helpers/promql.ts';
import { makeTempDir, startServer, type TestServer } from './helpers/server.ts';

/**
 * deploy/grafana (no Grafana here): the dashboard is well formed, covers what an operator
 * watches, every query is valid PromQL (promtool checks each as a recording rule), and every
 * metric it reads is one a running Bantu exports. The provisioning files point at the folder
 * and data source the dashboard uses.
 */
const GRAFANA = path.join(import.meta.dirname, '..', 'deploy', 'grafana');
/** The data source variable every query uses (a Grafana placeholder, not a template literal). */
const DATASOURCE = ['$', '{datasource}'].join('');

interface Target {
  refId: string;
  expr: string;
  datasource?: { uid: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { uid: string };
  targets?: Target[];
}
interface Dashboard {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query: string | { query: string } }> };
}
const dashboards = (): Array<[string, Dashboard]> =>
  fs
    .readdirSync(path.join(GRAFANA, 'dashboards'))
    .filter((file) => file.endsWith('.json'))
    .map((file) => [file, JSON.parse(fs.readFileSync(path.join(GRAFANA, 'dashboards', file), 'utf8')) as Dashboard]);
const queries = (dashboard: Dashboard) => dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ panel, target })));
/** Grafana's variables as Prometheus would see them once Grafana has put values in. */
const substituted = (expr: string) => expr.replaceAll('$__rate_interval', '1m').replaceAll('$service', '.+');

describe('deploy/grafana', () => {
  it('has one dashboard, well formed: unique panel ids, every query on the data source variable', () => {
    const all = dashboards();
    assert.equal(all.length, 1);
    for (const [file, dashboard] of all) {
      assert.ok(dashboard.uid && dashboard.title, `${file}: uid and title`);
      const ids = dashboard.panels.map((p) => p.id);
      assert.equal(new Set(ids).size, ids.length, `${file}: panel ids are unique`);
      for (const panel of dashboard.panels) {
        assert.ok(panel.gridPos.w > 0 && panel.gridPos.x + panel.gridPos.w <= 24, `${file}: ${panel.title} fits the 24-column grid`);
        if (panel.type === 'row') continue;
        assert.ok(panel.targets?.length, `${file}: ${panel.title} has queries`);
        assert.equal(panel.datasource?.uid, DATASOURCE);
        for (const target of panel.targets ?? []) assert.equal(target.datasource?.uid, DATASOURCE, `${file}: ${panel.title} ${target.refId}`);
      }
      assert.ok(dashboard.templating.list.some((v) => v.name === 'datasource' && v.type === 'datasource'));
    }
  });

  it('covers request rate, errors and latency per route and service, backup, notifications, bus lag and pool use', () => {
    const [, dashboard] = dashboards()[0] as [string, Dashboard];
    const reads = (pattern: RegExp) => queries(dashboard).some(({ target }) => pattern.test(target.expr));
    const wanted: Array<[string, RegExp]> = [
      ['request rate per route', /sum by \(service, method, route\) \(rate\(http_request_duration_seconds_count/],
      ['request rate per service', /sum by \(service\) \(rate\(http_request_duration_seconds_count/],
      ['5xx per service', /status_code=~"5\.\."/],
      ['errors per route', /sum by \(service, route, status_code\)/],
      ['latency per service', /histogram_quantile\(0\.95, sum by \(service, le\) \(rate\(http_request_duration_seconds_bucket/],
      ['latency per route', /sum by \(service, method, route, le\) \(rate\(http_request_duration_seconds_bucket/],
      ['backup lag', /backup_lag_seconds/],
      ['backup throughput', /rate\(backup_record_lag_seconds_count/],
      ['notification sockets', /bantu_notifications_sockets/],
      ['notification latency', /bantu_notifications_delivery_seconds_bucket/],
      ['bus lag', /bantu_bus_lag_seconds/],
      ['database pool use', /bantu_db_pool_connections\{[^}]*state="idle"/],
    ];
    assert.deepEqual(wanted.filter(([, pattern]) => !reads(pattern)).map(([what]) => what), []);
  });

  it('every query is valid PromQL (promtool checks each as a recording rule)', async () => {
    const [, dashboard] = dashboards()[0] as [string, Dashboard];
    const rules = queries(dashboard).map(({ panel, target }) => ({ record: `dashboard:panel_${panel.id}_${target.refId}`, expr: substituted(target.expr) }));
    const dir = await makeTempDir('bantu-grafana-');
    try {
      const check = (group: object[]) => {
        fs.writeFileSync(path.join(dir, 'dashboard.rules.yml'), stringify({ groups: [{ name: 'dashboard', rules: group }] }));
        return spawnSync('promtool', ['check', 'rules', path.join(dir, 'dashboard.rules.yml')], { encoding: 'utf8' });
      };
      const result = check(rules);
      assert.equal(result.error, undefined, "promtool is on the PATH (.ci/run installs Debian's prometheus package when it is missing)");
      assert.equal(result.status, 0, result.stdout + result.stderr);
      assert.match(result.stdout, new RegExp(`SUCCESS: ${rules.length} rules found`));
      // The check itself: a broken query is reported.
      assert.equal(check([...rules, { record: 'dashboard:broken', expr: 'sum by (service (rate(x[1m]))' }]).status, 1);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('provisions the dashboards folder and the Prometheus data source', () => {
    const providers = parse(fs.readFileSync(path.join(GRAFANA, 'provisioning', 'dashboards', 'bantu.yaml'), 'utf8')) as { providers: Array<{ type: string; options: { path: string } }> };
    assert.equal(providers.providers[0]?.type, 'file');
    assert.match(providers.providers[0]?.options.path ?? '', /^\/.+/);
    const sources = parse(fs.readFileSync(path.join(GRAFANA, 'provisioning', 'datasources', 'prometheus.yaml'), 'utf8')) as { datasources: Array<{ type: string; url: string }> };
    assert.equal(sources.datasources[0]?.type, 'prometheus');
    assert.match(sources.datasources[0]?.url ?? '', /^https?:\/\/.+:9090$/);
  });
});

describe('deploy/grafana against a running Bantu', () => {
  let server: TestServer;
  let exported: Set<string>;
  before(async () => {
    server = await startServer();
    exported = await metricsExportedBy(server);
  });
  after(async () => server?.close());

  it('every metric a panel or a variable reads is one Bantu exports', () => {
    const unknown: string[] = [];
    for (const [file, dashboard] of dashboards()) {
      for (const { panel, target } of queries(dashboard)) {
        for (const name of metricNames(target.expr)) if (!exported.has(name) && !PROMETHEUS_SERIES.has(name)) unknown.push(`${file}: ${panel.title}: ${name}`);
      }
      for (const variable of dashboard.templating.list) {
        const query = typeof variable.query === 'string' ? variable.query : variable.query.query;
        const metric = /^label_values\((\w+),/.exec(query)?.[1];
        if (variable.type === 'query' && !(metric && exported.has(metric))) unknown.push(`${file}: variable ${variable.name}: ${query}`);
      }
    }
    assert.deepEqual(unknown, []);
  });
});
