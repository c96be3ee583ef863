import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { tenantBatch, withTenant } from '../src/adapters/db/pg.ts';
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

  it('binds a pipelined batch to its tenant too, and commits all of it or none', async () => {
    const db = server.app.databases.environments.test;
    const all = await sql<{ tenant_id: string }>`select distinct tenant_id from identity.api_key order by tenant_id`.execute(db);
    const [first, second] = all.rows.map((row) => row.tenant_id) as [string, string];
    const event = (id: string, tenant: string) =>
      sql`insert into identity.audit_event (id, tenant_id, type, actor, ip, detail) values (${id}, ${tenant}, 'login_succeeded', null, null, '{}')`;
    const count = async (prefix: string) =>
      Number((await sql<{ n: number }>`select count(*)::int as n from identity.audit_event where id like ${`${prefix}%`}`.execute(db)).rows[0]?.n);

    // Results come back per statement, in order, seen through the bound tenant as bantu_app.
    const [who, keys, inserted] = await tenantBatch(db, first, [
      sql<{ current_user: string }>`select current_user`,
      sql<{ tenant_id: string }>`select distinct tenant_id from identity.api_key`,
      sql<{ id: string }>`insert into identity.audit_event (id, tenant_id, type, detail) values ('aud_batch_ok', ${first}, 'login_succeeded', '{}') returning id`,
    ]);
    assert.deepEqual(who, [{ current_user: 'bantu_app' }]);
    assert.deepEqual(keys, [{ tenant_id: first }], 'an unfiltered query sees only the bound tenant');
    assert.deepEqual(inserted, [{ id: 'aud_batch_ok' }]);
    assert.equal(await count('aud_batch_ok'), 1);

    // A statement that fails (another tenant's row) undoes the statements before it, and the ones after never run.
    await assert.rejects(tenantBatch(db, first, [event('aud_batch_a', first), event('aud_batch_b', second), event('aud_batch_c', first)]), /row-level security/);
    assert.equal(await count('aud_batch_'), 1, 'nothing of the failed batch was committed');

    // The tenant binding and the role end with the batch: the pool's connections come back clean.
    for (let i = 0; i < 12; i++) {
      const after = await sql<{ role: string; tenant: string | null }>`select current_user as role, nullif(current_setting('bantu.tenant_id', true), '') as tenant`.execute(db);
      assert.notEqual(after.rows[0]?.role, 'bantu_app');
      assert.equal(after.rows[0]?.tenant, null);
    }
    const [again] = await tenantBatch(db, second, [sql<{ tenant_id: string }>`select distinct tenant_id from identity.api_key`]);
    assert.deepEqual(again, [{ tenant_id: second }], 'a batch after a failed one works');
  });
});
