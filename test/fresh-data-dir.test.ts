import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import pino from 'pino';
import { dropDatabases } from '../src/adapters/db/pg.ts';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/core/config.ts';
import { makeTempDir } from './helpers/server.ts';

/**
 * A first start on a data dir that does not exist yet, as `npm ci && npm start` in a fresh
 * clone does. The data dir Bantu makes must let the embedded PostgreSQL in (it runs as the
 * user "postgres" when Bantu runs as root): made 0755, before anything writes into it.
 */
describe('first start on a fresh data dir', () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('makes the data dir enterable by others, then starts', async () => {
    const parent = await makeTempDir();
    cleanups.push(() => fs.rm(parent, { recursive: true, force: true }));
    const dataDir = path.join(parent, 'fresh', 'data');
    const external = process.env.BANTU_TEST_DATABASE_URL;
    const databaseUrl = external ? Object.assign(new URL(external), { pathname: `/bantu_t_fresh_${process.pid}` }).toString() : undefined;
    const result = loadConfig({ BANTU_DATA_DIR: dataDir, BANTU_PORT: '0', BANTU_LOG_LEVEL: 'silent', ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}) });
    assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
    const app = createApp(result.config, pino({ level: 'silent' }));
    cleanups.push(async () => {
      await app.close();
      if (databaseUrl) await dropDatabases(databaseUrl);
    });
    const started = await app.start();
    assert.match(started.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const mode = (await fs.stat(dataDir)).mode & 0o777;
    assert.equal(mode & 0o005, 0o005, `the data dir is ${mode.toString(8)}: others must be able to enter it`);
    assert.ok((await fs.stat(path.join(dataDir, 'tls', 'cert.pem'))).isFile());
  });
});
