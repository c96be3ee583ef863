import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import type { Db } from '../src/adapters/db/pg.ts';
import { resetTokenIn, waitForMails } from './helpers/mail.ts';
import { startServer, type TestServer } from './helpers/server.ts';

/**
 * Secrets are kept only as hashes and never logged: after a life that makes every kind of
 * secret (password, API key, refresh tokens, a reset token), no table of any database and no
 * log line holds one of them in clear. The log is read at debug level, the most verbose.
 */
const PASSWORD = 'correct horse battery';
const NEW_PASSWORD = 'staple horse battery';

/** Every row of every table of the database, as JSON text. */
async function dumpDatabase(db: Db): Promise<string> {
  const tables = await sql<{ schema: string; name: string }>`
    select table_schema as schema, table_name as name from information_schema.tables
    where table_type = 'BASE TABLE' and table_schema not in ('pg_catalog', 'information_schema')`.execute(db);
  const parts: string[] = [];
  for (const { schema, name } of tables.rows) {
    const rows = await sql<{ row: string }>`select row_to_json(t)::text as row from ${sql.table(`${schema}.${name}`)} t`.execute(db);
    parts.push(...rows.rows.map((r) => r.row));
  }
  return parts.join('\n');
}

describe('secrets at rest and in logs', () => {
  let server: TestServer;
  const log: string[] = [];

  before(async () => {
    const destination = new Writable({
      write(chunk, _encoding, done) {
        log.push(String(chunk));
        done();
      },
    });
    server = await startServer({ BANTU_LOG_LEVEL: 'debug' }, { logDestination: destination });
  });
  after(async () => server?.close());

  it('keeps keys, tokens and passwords only as hashes, and logs none of them; logs carry the request id', async () => {
    const appKey = server.keys.test.application_key;
    const accountKey = server.keys.test.account_key;
    const secrets: Record<string, string> = { PASSWORD, NEW_PASSWORD, appKey, accountKey, operatorToken: server.operatorToken };

    const registered = await server.request('POST', '/v1/auth/register', { basic: appKey, json: { email: 'kim@example.com', password: PASSWORD, name: 'Kim' } });
    assert.equal(registered.status, 201);
    secrets.firstRefresh = registered.json.refresh_token;
    const refreshed = await server.request('POST', '/v1/auth/refresh', { basic: appKey, json: { refresh_token: registered.json.refresh_token } });
    assert.equal(refreshed.status, 200);
    secrets.secondRefresh = refreshed.json.refresh_token;
    const loggedIn = await server.request('POST', '/v1/auth/login', { basic: appKey, json: { email: 'kim@example.com', password: PASSWORD }, headers: { 'x-request-id': 'trace-login-42' } });
    assert.equal(loggedIn.status, 200);
    secrets.loginRefresh = loggedIn.json.refresh_token;
    const wrong = await server.request('POST', '/v1/auth/login', { basic: appKey, json: { email: 'kim@example.com', password: 'not the password' } });
    assert.equal(wrong.status, 401);
    secrets.wrongPassword = 'not the password';

    const key = await server.request('POST', '/v1/keys', { basic: accountKey, json: { kind: 'application', name: 'crm', scopes: ['files:read'] } });
    assert.equal(key.status, 201);
    secrets.createdKey = key.json.key;

    assert.equal((await server.request('POST', '/v1/auth/password/forgot', { basic: appKey, json: { email: 'kim@example.com' } })).status, 202);
    const [mailFile] = await waitForMails(server.dataDir, 1);
    const resetToken = resetTokenIn(await fs.readFile(mailFile as string, 'utf8'));
    secrets.resetToken = resetToken;
    assert.equal((await server.request('POST', '/v1/auth/password/reset', { basic: appKey, json: { token: resetToken, password: NEW_PASSWORD } })).status, 204);

    const { databases } = server.app;
    const stored = [await dumpDatabase(databases.control), await dumpDatabase(databases.environments.test), await dumpDatabase(databases.environments.live)].join('\n');
    assert.ok(stored.includes('kim@example.com'), 'the dump does read the tables');
    assert.match(stored, /\$argon2id\$/, 'the password is there, hashed');
    for (const [name, secret] of Object.entries(secrets)) {
      assert.ok(!stored.includes(secret), `${name} is stored in clear`);
    }

    const logText = log.join('');
    assert.ok(logText.length > 0, 'the server logged');
    assert.ok(logText.includes('"trace-login-42"'), 'the login request\'s log lines carry its request id');
    for (const [name, secret] of Object.entries(secrets)) {
      assert.ok(!logText.includes(secret), `${name} appears in the log`);
    }
  });
});
