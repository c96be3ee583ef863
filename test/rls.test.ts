import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { withTenant } from '../src/adapters/db/pg.ts';
import { createTenant } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';

// Isolation is enforced twice: by every query's tenant filter, and by row-level security
// bound to the transaction. This checks the second layer on its own, with queries that
// name no tenant at all.
describe('row-level security', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
    await createTenant(server, 'Second');
  });
  after(async () => server?.close());

  it('binds a transaction to its tenant, as a role that cannot bypass the policies', async () => {
    const db = server.app.databases.environments.test;
    const all = await sql<{ tenant_id: string }>`select distinct tenant_id from identity.api_key`.execute(db);
    assert.equal(all.rows.length, 2, 'two tenants have keys');
    const [first, second] = all.rows.map((row) => row.tenant_id) as [string, string];

    const seen = await withTenant(db, first, async (trx) => {
      const role = await sql<{ current_user: string }>`select current_user`.execute(trx);
      const rows = await sql<{ tenant_id: string }>`select tenant_id from identity.api_key`.execute(trx);
      return { role: role.rows[0]?.current_user, tenants: new Set(rows.rows.map((row) => row.tenant_id)) };
    });
    assert.equal(seen.role, 'bantu_app');
    assert.deepEqual([...seen.tenants], [first], 'an unfiltered query sees only the bound tenant');

    await assert.rejects(
      withTenant(db, first, (trx) => sql`insert into identity.api_key (id, tenant_id, kind, name, prefix, hash) values ('key_x', ${second}, 'account', 'x', 'x', '\\x00')`.execute(trx)),
      /row-level security/,
      "a row of another tenant cannot be written",
    );
  });
});
