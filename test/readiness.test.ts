import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startServer, type TestServer } from './helpers/server.ts';

// Needs a database this test may stop: the embedded one. `npm test` (and so CI) runs it;
// against the machine's shared PostgreSQL (npm run test:machine) there is nothing to stop.
const embedded = !process.env.BANTU_TEST_DATABASE_URL;

describe('readiness when the database goes away', { skip: embedded ? false : 'the machine PostgreSQL is shared' }, () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => server?.close());

  it('answers 503 naming the database, keeps answering health, and never crashes', async () => {
    assert.equal((await server.request('GET', '/readyz')).status, 200);
    const pidFile = path.join(server.dataDir, 'postgres', 'postmaster.pid');
    const pid = Number.parseInt(fs.readFileSync(pidFile, 'utf8').split('\n')[0] ?? '', 10);
    process.kill(pid, 'SIGKILL');
    await new Promise((resolve) => setTimeout(resolve, 300));

    const ready = await server.request('GET', '/readyz');
    assert.equal(ready.status, 503);
    assert.equal(ready.json.status, 'unavailable');
    assert.equal(ready.json.dependencies.database.status, 'down');
    assert.equal(ready.json.dependencies.database.detail, 'not answering');
    assert.ok(!/ECONNREFUSED|127\.0\.0\.1|\bat /.test(ready.text), `no internal detail in the 503: ${ready.text}`);
    assert.equal((await server.request('GET', '/healthz')).status, 200, 'the process itself is alive');
    const failed = await server.request('GET', '/v1/keys', { basic: server.keys.test.account_key });
    assert.ok(failed.status >= 500 || failed.status === 401, `answered ${failed.status}`);
    assert.ok(!failed.text.includes('ECONNREFUSED') && !failed.text.includes('at '), 'no internal detail leaks');
  });
});
