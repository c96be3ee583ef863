import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { type Databases, dropDatabases, migrate, openDatabases } from '../src/adapters/db/pg.ts';
import { makeTempDir, startServer, type TestServer } from './helpers/server.ts';

/**
 * Migrations under concurrent starts: several processes migrating the same fresh database at
 * once apply each file exactly once, in order. The files here are deliberately not
 * idempotent (a bare CREATE TABLE, an INSERT), so a second application would fail or show.
 */
const embedded = !process.env.BANTU_TEST_DATABASE_URL;

describe('migrations', () => {
  let server: TestServer;
  let baseUrl: string;
  let folder: string;
  before(async () => {
    server = await startServer();
    const url = new URL(server.app.databases.controlUrl);
    url.pathname = `/bantu_mig_${randomBytes(4).toString('hex')}`;
    baseUrl = url.toString();
    folder = await makeTempDir('bantu-migrations-');
    await fs.writeFile(path.join(folder, '0001_create.sql'), 'create table migration_probe (n int not null);');
    await fs.writeFile(path.join(folder, '0002_first_row.sql'), 'insert into migration_probe (n) values (1);');
    await fs.writeFile(path.join(folder, '0003_second_row.sql'), 'insert into migration_probe (n) select max(n) + 1 from migration_probe;');
  });
  after(async () => {
    await dropDatabases(baseUrl).catch(() => undefined);
    await server?.close();
  });

  it('applies each file once, in order, when several starts migrate the same database at once', async () => {
    const starts: Databases[] = await Promise.all([1, 2, 3, 4].map(() => openDatabases(baseUrl)));
    try {
      const applied = await Promise.all(starts.map((databases) => migrate(databases.control, [{ service: 'probe', folder }])));
      assert.deepEqual(applied.flat().sort(), ['probe/0001_create.sql', 'probe/0002_first_row.sql', 'probe/0003_second_row.sql']);
      const rows = await sql<{ n: number }>`select n from migration_probe order by n`.execute((starts[0] as Databases).control);
      assert.deepEqual(rows.rows.map((r) => r.n), [1, 2], 'each insert ran once, the second after the first');
      const again = await migrate((starts[1] as Databases).control, [{ service: 'probe', folder }]);
      assert.deepEqual(again, [], 'a later start applies nothing');
    } finally {
      await Promise.all(starts.map((databases) => databases.close()));
    }
  });

  it('embedded PostgreSQL listens on 127.0.0.1 only, with no Unix socket', { skip: embedded ? false : 'the machine PostgreSQL is not ours' }, async () => {
    const db = server.app.databases.control;
    const listen = await sql<{ listen_addresses: string }>`show listen_addresses`.execute(db);
    assert.equal(listen.rows[0]?.listen_addresses, '127.0.0.1');
    const sockets = await sql<{ unix_socket_directories: string }>`show unix_socket_directories`.execute(db);
    assert.equal(sockets.rows[0]?.unix_socket_directories, '');
  });
});
