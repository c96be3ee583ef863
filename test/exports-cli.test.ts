import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { runCli } from './helpers/cli.ts';
import { sha256, uploadRaw } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { readZip } from './helpers/zip.ts';

/** `bantu export`: the operator's zip of a tenant, written to a file. */
describe('bantu export', () => {
  let server: TestServer;
  let tenantId: string;
  let key: string;
  before(async () => {
    server = await startServer();
    const created = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name: 'Export Co' } });
    tenantId = created.json.id;
    key = created.json.keys.live.account_key;
  });
  after(async () => server?.close());

  it('writes the tenant\'s zip with versions, plain progress lines off a terminal, and unzip accepts it', async () => {
    const first = await uploadRaw(server, key, 'version one', { name: 'doc.txt', path: '/docs' });
    const replaced = await server.request('PUT', `/v1/files/${first.json.id}/content`, { auth: key, body: 'version two', headers: { 'content-type': 'text/plain' } });
    assert.equal(replaced.status, 200);
    await uploadRaw(server, key, 'other', { name: 'other.txt' });
    await uploadRaw(server, server.keys.live.account_key, 'another tenant', { name: 'default.txt' });
    const out = path.join(server.dataDir, 'export.zip');
    const cli = runCli(['export', '--tenant', tenantId, '--env', 'live', '--include-versions', '--out', out], {
      DATABASE_URL: server.app.databases.controlUrl,
      BANTU_DATA_DIR: server.dataDir,
      BANTU_LOG_LEVEL: 'error',
    });
    assert.equal((await cli.exited).code, 0, cli.stdout() + cli.stderr());
    assert.match(cli.stdout(), /wrote .*export\.zip: 2 files/);
    assert.match(cli.stderr(), /^export: 0\/2 files$/m, 'plain lines when stderr is not a terminal');
    assert.match(cli.stderr(), /^export: 2\/2 files$/m);
    await assert.rejects(fs.stat(`${out}.part`), 'no partial file left');
    const { stdout } = await promisify(execFile)('/usr/bin/unzip', ['-t', out]);
    assert.match(stdout, /No errors detected/);
    const entries = new Map((await readZip(await fs.readFile(out))).map((e) => [e.name, e.data]));
    assert.deepEqual([...entries.keys()].sort(), ['files/docs/doc.txt', 'files/other.txt', 'manifest.json', 'versions/docs/doc.txt/v1', 'versions/docs/doc.txt/v2', 'versions/other.txt/v1']);
    assert.equal(entries.get('files/docs/doc.txt')?.toString(), 'version two');
    assert.equal(entries.get('versions/docs/doc.txt/v1')?.toString(), 'version one');
    const manifest = JSON.parse(entries.get('manifest.json')?.toString() ?? '{}');
    assert.equal(manifest.environment, 'live');
    assert.equal(manifest.files.find((f: { name: string }) => f.name === 'doc.txt').sha256, sha256('version two'));

    const bad = runCli(['export', '--tenant', tenantId, '--env', 'staging', '--out', out], { DATABASE_URL: server.app.databases.controlUrl, BANTU_DATA_DIR: server.dataDir });
    assert.equal((await bad.exited).code, 2, bad.stderr());
  });
});
