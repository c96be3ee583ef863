import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { decodeJwt } from 'jose';
import { sql } from 'kysely';
import { type Db, tenantBatch } from '../src/adapters/db/pg.ts';
import { loginSessionInsert } from '../src/services/identity/repo/sessions.repo.ts';
import { decodeQuotedPrintable, resetTokenIn, type SmtpReceiver, startSmtpReceiver, waitForMails } from './helpers/mail.ts';
import { startServer, type TestServer } from './helpers/server.ts';

/** The user's whole life over real HTTPS: register to password reset, by mail file and by SMTP. */
const PASSWORD = 'correct horse battery staple';

async function register(server: TestServer, email: string, password = PASSWORD, key = server.keys.test.application_key) {
  const response = await server.request('POST', '/v1/auth/register', { basic: key, json: { email, password, name: 'Alice Example' } });
  assert.equal(response.status, 201, response.text);
  return response.json;
}

async function counts(db: Db) {
  const result = await sql<{ sessions: number; entries: number }>`
    select (select count(*)::int from identity.refresh_token) as sessions, (select count(*)::int from identity.audit_event) as entries`.execute(db);
  return result.rows[0];
}

async function login(server: TestServer, email: string, password: string, key = server.keys.test.application_key) {
  return server.request('POST', '/v1/auth/login', { basic: key, json: { email, password } });
}

describe('identity flow over HTTPS (mail as .eml files)', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ BANTU_PUBLIC_URL: 'https://bantu.example.com' });
  });
  after(async () => server?.close());

  it('registers a user and answers a duplicate email, in any case, with 409 email_taken', async () => {
    const created = await register(server, 'alice@example.com');
    assert.deepEqual(Object.keys(created).sort(), ['access_token', 'expires_in', 'refresh_token', 'token_type', 'user']);
    assert.equal(created.token_type, 'Bearer');
    assert.equal(created.expires_in, 900);
    assert.match(created.user.id, /^usr_/);
    assert.deepEqual(Object.keys(created.user).sort(), ['created_at', 'email', 'id', 'name', 'role', 'updated_at']);
    assert.equal(created.user.role, 'user');
    assert.ok(!JSON.stringify(created).includes(PASSWORD));

    const duplicate = await server.request('POST', '/v1/auth/register', {
      basic: server.keys.test.application_key,
      json: { email: 'ALICE@Example.COM', password: PASSWORD, name: 'Other' },
    });
    assert.equal(duplicate.status, 409);
    assert.equal(duplicate.json.code, 'email_taken');
  });

  it('stores the password as argon2id with m>=19456, t>=2, p>=1', async () => {
    const { rows } = await sql<{ password_hash: string }>`select password_hash from identity.app_user where lower(email) = 'alice@example.com'`.execute(
      server.app.databases.environments.test,
    );
    const stored = rows[0]?.password_hash ?? '';
    assert.match(stored, /^\$argon2id\$/);
    const params = Object.fromEntries((/\$m=(\d+),t=(\d+),p=(\d+)\$/.exec(stored) ?? []).slice(1).map((v, i) => [['m', 't', 'p'][i], Number(v)]));
    assert.ok(params.m !== undefined && params.m >= 19456, stored);
    assert.ok(params.t !== undefined && params.t >= 2, stored);
    assert.ok(params.p !== undefined && params.p >= 1, stored);
  });

  it('refuses bad input with 422 validation_failed and keeps nothing', async () => {
    const key = server.keys.test.application_key;
    const cases: Array<{ body: unknown; raw?: string; field: string }> = [
      { body: { email: 'short@example.com', password: 'short', name: 'X' }, field: 'password' },
      { body: { email: 'long@example.com', password: 'x'.repeat(1025), name: 'X' }, field: 'password' },
      { body: { email: 'missing@example.com', name: 'X' }, field: 'password' },
      { body: { email: 'not-an-email', password: PASSWORD, name: 'X' }, field: 'email' },
      { body: { email: 'types@example.com', password: 12345678, name: 'X' }, field: 'password' },
      { body: { email: 'name@example.com', password: PASSWORD, name: 'n'.repeat(201) }, field: 'name' },
      { body: { email: 'extra@example.com', password: PASSWORD, name: 'X', role: 'admin' }, field: 'role' },
      { body: undefined, raw: '{"email": "broken@example.com", ', field: 'body' },
    ];
    for (const c of cases) {
      const response = await server.request('POST', '/v1/auth/register', {
        basic: key,
        ...(c.raw ? { body: c.raw, headers: { 'content-type': 'application/json' } } : { json: c.body }),
      });
      assert.equal(response.status, 422, `${JSON.stringify(c.body ?? c.raw)} -> ${response.text}`);
      assert.equal(response.json.code, 'validation_failed');
      assert.ok(response.json.errors.some((e: { field: string }) => e.field === c.field), response.text);
    }
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from identity.app_user where email <> 'alice@example.com'`.execute(
      server.app.databases.environments.test,
    );
    assert.equal(rows[0]?.n, 0, 'no failed registration left a user behind');
  });

  it('a register that loses a race for its email leaves nothing behind: one user, one session, one audit entry', async () => {
    const key = server.keys.test.application_key;
    const answers = await Promise.all(
      [1, 2, 3, 4, 5].map((n) => server.request('POST', '/v1/auth/register', { basic: key, json: { email: n % 2 ? 'race@example.com' : 'RACE@example.com', password: PASSWORD, name: `Racer ${n}` } })),
    );
    assert.deepEqual(answers.map((a) => a.status).sort(), [201, 409, 409, 409, 409]);
    for (const lost of answers.filter((a) => a.status === 409)) assert.equal(lost.json.code, 'email_taken');
    const db = server.app.databases.environments.test;
    const users = await sql<{ id: string }>`select id from identity.app_user where lower(email) = 'race@example.com'`.execute(db);
    assert.equal(users.rows.length, 1);
    const userId = users.rows[0]?.id as string;
    const sessions = await sql<{ n: number }>`select count(*)::int as n from identity.refresh_token where user_id = ${userId}`.execute(db);
    assert.equal(sessions.rows[0]?.n, 1, 'only the winner opened a session');
    const audit = await sql<{ n: number }>`select count(*)::int as n from identity.audit_event where type = 'user_created' and detail->>'email' ilike 'race@example.com'`.execute(db);
    assert.equal(audit.rows[0]?.n, 1, 'only the winner was audited');
  });

  it('logs in case-insensitively; wrong password and unknown email get the same 401', async () => {
    const ok = await login(server, 'Alice@Example.com', PASSWORD);
    assert.equal(ok.status, 200);
    assert.equal(ok.json.user.email, 'alice@example.com');
    const wrong = await login(server, 'alice@example.com', 'not the password');
    const unknown = await login(server, 'nobody@example.com', 'not the password');
    assert.equal(wrong.status, 401);
    assert.equal(unknown.status, 401);
    assert.equal(wrong.json.code, 'invalid_credentials');
    const strip = (body: Record<string, unknown>) => ({ ...body, request_id: undefined });
    assert.deepEqual(strip(wrong.json), strip(unknown.json));
  });

  it('a login writes one session and one login_succeeded entry; for a user deleted meanwhile it writes nothing', async () => {
    const db = server.app.databases.environments.test;
    const ok = await login(server, 'alice@example.com', PASSWORD);
    assert.equal(ok.status, 200, ok.text);
    const userId = ok.json.user.id as string;
    const tenantId = ok.json.user.tenant_id ?? (await sql<{ tenant_id: string }>`select tenant_id from identity.app_user where id = ${userId}`.execute(db)).rows[0]?.tenant_id;
    const session = await sql<{ n: number }>`select count(*)::int as n from identity.refresh_token where family_id = ${decodeJwt(ok.json.access_token).sid as string}`.execute(db);
    assert.equal(session.rows[0]?.n, 1);
    // The login's write statement, for a user that is gone by the time it runs (deleted
    // while its password was checked): no row answers, and neither session nor entry is kept.
    const before = await counts(db);
    const [locked] = await tenantBatch(db, tenantId as string, [
      loginSessionInsert(
        'usr_gone',
        { id: 'rtk_gone', tenant_id: tenantId as string, user_id: 'usr_gone', family_id: 'ses_gone', hash: Buffer.alloc(32, 7), expires_at: new Date(Date.now() + 60_000) },
        { id: 'aud_gone', tenant_id: tenantId as string, type: 'login_succeeded', actor: { type: 'user', id: 'usr_gone' }, ip: '127.0.0.1', detail: {} },
      ),
    ]);
    assert.deepEqual(locked, []);
    assert.deepEqual(await counts(db), before);
  });

  it('reads and updates the caller with its access token; email and password changes need current_password', async () => {
    const session = (await login(server, 'alice@example.com', PASSWORD)).json;
    const me = await server.request('GET', '/v1/users/me', { auth: session.access_token });
    assert.equal(me.status, 200);
    assert.deepEqual(me.json, session.user);

    const renamed = await server.request('PATCH', '/v1/users/me', { auth: session.access_token, json: { name: 'Alice Renamed' } });
    assert.equal(renamed.status, 200);
    assert.equal(renamed.json.name, 'Alice Renamed');

    const noCurrent = await server.request('PATCH', '/v1/users/me', { auth: session.access_token, json: { email: 'alice2@example.com' } });
    assert.equal(noCurrent.status, 422);
    assert.equal(noCurrent.json.errors[0].field, 'current_password');
    const wrongCurrent = await server.request('PATCH', '/v1/users/me', {
      auth: session.access_token,
      json: { email: 'alice2@example.com', current_password: 'wrong password' },
    });
    assert.equal(wrongCurrent.status, 401);
    assert.equal(wrongCurrent.json.code, 'invalid_credentials');
    const unknownField = await server.request('PATCH', '/v1/users/me', { auth: session.access_token, json: { role: 'admin' } });
    assert.equal(unknownField.status, 422);

    await register(server, 'taken@example.com');
    const taken = await server.request('PATCH', '/v1/users/me', {
      auth: session.access_token,
      json: { email: 'TAKEN@example.com', current_password: PASSWORD },
    });
    assert.equal(taken.status, 409);
    assert.equal(taken.json.code, 'email_taken');

    const moved = await server.request('PATCH', '/v1/users/me', {
      auth: session.access_token,
      json: { email: 'alice2@example.com', current_password: PASSWORD },
    });
    assert.equal(moved.status, 200);
    assert.equal(moved.json.email, 'alice2@example.com');
    assert.equal((await login(server, 'alice2@example.com', PASSWORD)).status, 200);
    assert.equal((await login(server, 'alice@example.com', PASSWORD)).status, 401);

    // A new password ends the other sessions, not the caller's.
    const other = (await login(server, 'alice2@example.com', PASSWORD)).json;
    const changed = await server.request('PATCH', '/v1/users/me', {
      auth: session.access_token,
      json: { password: 'a brand new password', current_password: PASSWORD },
    });
    assert.equal(changed.status, 200);
    const otherRefresh = await server.request('POST', '/v1/auth/refresh', { basic: server.keys.test.application_key, json: { refresh_token: other.refresh_token } });
    assert.equal(otherRefresh.status, 400);
    assert.equal((await server.request('GET', '/v1/users/me', { auth: other.access_token })).status, 401, "the other session's access token died with it");
    assert.equal((await server.request('GET', '/v1/users/me', { auth: session.access_token })).status, 200, "the caller's goes on");
    const ownRefresh = await server.request('POST', '/v1/auth/refresh', { basic: server.keys.test.application_key, json: { refresh_token: session.refresh_token } });
    assert.equal(ownRefresh.status, 200);
    // Back to the original for the rest of the suite.
    const back = await server.request('PATCH', '/v1/users/me', {
      auth: ownRefresh.json.access_token,
      json: { email: 'alice@example.com', password: PASSWORD, current_password: 'a brand new password' },
    });
    assert.equal(back.status, 200);
  });

  it('rotates refresh tokens; a reused one revokes its whole family', async () => {
    const key = server.keys.test.application_key;
    const first = (await login(server, 'alice@example.com', PASSWORD)).json;
    const second = await server.request('POST', '/v1/auth/refresh', { basic: key, json: { refresh_token: first.refresh_token } });
    assert.equal(second.status, 200);
    assert.notEqual(second.json.refresh_token, first.refresh_token);
    assert.notEqual(second.json.access_token, first.access_token);
    const third = await server.request('POST', '/v1/auth/refresh', { basic: key, json: { refresh_token: second.json.refresh_token } });
    assert.equal(third.status, 200);

    const replay = await server.request('POST', '/v1/auth/refresh', { basic: key, json: { refresh_token: first.refresh_token } });
    assert.equal(replay.status, 400);
    assert.equal(replay.json.code, 'invalid_token');
    const afterReplay = await server.request('POST', '/v1/auth/refresh', { basic: key, json: { refresh_token: third.json.refresh_token } });
    assert.equal(afterReplay.status, 400, 'the newest token of the family died with it');
    assert.equal((await server.request('GET', '/v1/users/me', { auth: third.json.access_token })).status, 401, 'so did its access token');

    const unrelated = (await login(server, 'alice@example.com', PASSWORD)).json;
    const stillFine = await server.request('POST', '/v1/auth/refresh', { basic: key, json: { refresh_token: unrelated.refresh_token } });
    assert.equal(stillFine.status, 200, 'other sessions are untouched');

    const audit = await server.request('GET', '/v1/audit?limit=200', { basic: server.keys.test.account_key });
    assert.ok(audit.json.data.some((e: { type: string }) => e.type === 'refresh_token_reused'));
  });

  it('logs out: the session ends', async () => {
    const session = (await login(server, 'alice@example.com', PASSWORD)).json;
    const other = (await login(server, 'alice@example.com', PASSWORD)).json;
    const out = await server.request('POST', '/v1/auth/logout', { auth: session.access_token, json: { refresh_token: session.refresh_token } });
    assert.equal(out.status, 204);
    assert.equal((await server.request('GET', '/v1/users/me', { auth: session.access_token })).status, 401, 'its access token is refused before it expires');
    assert.equal((await server.request('GET', '/v1/users/me', { auth: other.access_token })).status, 200, 'another session goes on');
    const refresh = await server.request('POST', '/v1/auth/refresh', { basic: server.keys.test.application_key, json: { refresh_token: session.refresh_token } });
    assert.equal(refresh.status, 400);
    const byKey = await server.request('POST', '/v1/auth/logout', { basic: server.keys.test.application_key, json: { refresh_token: session.refresh_token } });
    assert.equal(byKey.status, 403, 'logout takes a user token');
  });

  it('recovers a password through a mailed single-use token', async () => {
    const key = server.keys.test.application_key;
    const before = (await login(server, 'alice@example.com', PASSWORD)).json;
    const known = await server.request('POST', '/v1/auth/password/forgot', { basic: key, json: { email: 'ALICE@example.com' } });
    const unknown = await server.request('POST', '/v1/auth/password/forgot', { basic: key, json: { email: 'ghost@example.com' } });
    assert.equal(known.status, 202);
    assert.equal(unknown.status, 202);
    assert.deepEqual(known.json, unknown.json);

    const [file] = await waitForMails(server.dataDir, 1);
    const mail = await fs.readFile(file as string, 'utf8');
    assert.match(mail, /^To: alice@example\.com$/m);
    assert.match(mail, /^Subject: Reset your password$/m);
    assert.match(decodeQuotedPrintable(mail), /https:\/\/bantu\.example\.com\/reset-password\?token=prt_/);
    const token = resetTokenIn(mail);

    const weak = await server.request('POST', '/v1/auth/password/reset', { basic: key, json: { token, password: 'short' } });
    assert.equal(weak.status, 422);
    const reset = await server.request('POST', '/v1/auth/password/reset', { basic: key, json: { token, password: 'reset password 123' } });
    assert.equal(reset.status, 204);
    const again = await server.request('POST', '/v1/auth/password/reset', { basic: key, json: { token, password: 'another password' } });
    assert.equal(again.status, 400);
    assert.equal(again.json.code, 'invalid_token');

    const oldRefresh = await server.request('POST', '/v1/auth/refresh', { basic: key, json: { refresh_token: before.refresh_token } });
    assert.equal(oldRefresh.status, 400, 'the reset ended every session');
    assert.equal((await server.request('GET', '/v1/users/me', { auth: before.access_token })).status, 401, 'and their access tokens');
    assert.equal((await login(server, 'alice@example.com', PASSWORD)).status, 401, 'the old password is refused');
    assert.equal((await login(server, 'alice@example.com', 'reset password 123')).status, 200, 'the new one works');
    assert.equal((await waitForMails(server.dataDir, 1)).length, 1, 'no mail for an unknown address');
  });

  it('refuses an expired reset token with 400 invalid_token', async () => {
    const key = server.keys.test.application_key;
    await server.request('POST', '/v1/auth/password/forgot', { basic: key, json: { email: 'taken@example.com' } });
    const files = await waitForMails(server.dataDir, 2);
    const token = resetTokenIn(await fs.readFile(files[1] as string, 'utf8'));
    await sql`update identity.password_reset set expires_at = now() - interval '1 second' where used_at is null`.execute(server.app.databases.environments.test);
    const expired = await server.request('POST', '/v1/auth/password/reset', { basic: key, json: { token, password: 'a fine new password' } });
    assert.equal(expired.status, 400);
    assert.equal(expired.json.code, 'invalid_token');
    const bogus = await server.request('POST', '/v1/auth/password/reset', { basic: key, json: { token: 'prt_nonsense', password: 'a fine new password' } });
    assert.equal(bogus.status, 400);
  });

  it('throttles repeated failures per account with 429 and Retry-After, known or unknown alike', async () => {
    await register(server, 'target@example.com');
    for (const email of ['target@example.com', 'nobody-here@example.com']) {
      for (let i = 0; i < 5; i++) assert.equal((await login(server, email, `wrong ${i}`)).status, 401);
      const limited = await login(server, email, 'wrong again');
      assert.equal(limited.status, 429);
      assert.equal(limited.json.code, 'rate_limited');
      assert.ok(Number(limited.headers['retry-after']) > 0);
    }
    const rightButLocked = await login(server, 'target@example.com', PASSWORD);
    assert.equal(rightButLocked.status, 429, 'a correct guess does not slip through');
    assert.equal((await login(server, 'alice@example.com', 'reset password 123')).status, 200, 'other accounts are not affected');
  });

  it('lists security events for the account key, newest first, with a cursor', async () => {
    const key = server.keys.test.account_key;
    const all: Array<{ id: string; type: string; created_at: string; ip: string | null }> = [];
    let cursor: string | null = null;
    do {
      const page = await server.request('GET', `/v1/audit?limit=7${cursor ? `&cursor=${cursor}` : ''}`, { basic: key });
      assert.equal(page.status, 200, page.text);
      all.push(...page.json.data);
      cursor = page.json.next_cursor;
    } while (cursor);
    const types = new Set(all.map((e) => e.type));
    for (const type of ['user_created', 'login_succeeded', 'login_failed', 'login_throttled', 'password_reset', 'password_changed']) assert.ok(types.has(type), type);
    const ids = all.map((e) => e.id);
    assert.deepEqual(ids, [...ids].sort().reverse(), 'newest first');
    assert.equal(new Set(ids).size, ids.length);
    assert.ok(all.every((e) => e.ip === '127.0.0.1' || e.ip === '::ffff:127.0.0.1'));
    assert.ok(!JSON.stringify(all).includes(PASSWORD), 'no password in the audit trail');
    assert.equal((await server.request('GET', '/v1/audit', { basic: server.keys.test.application_key })).status, 403);
  });

  it('publishes the signing keys at /.well-known/jwks.json', async () => {
    const response = await server.request('GET', '/.well-known/jwks.json');
    assert.equal(response.status, 200);
    assert.equal(response.json.keys.length, 2, 'one key per environment');
    for (const key of response.json.keys) {
      assert.equal(key.kty, 'OKP');
      assert.equal(key.crv, 'Ed25519');
      assert.equal(key.alg, 'EdDSA');
      assert.ok(key.kid);
      assert.equal(key.d, undefined, 'never the private part');
    }
  });
});

describe('identity mail over SMTP', () => {
  let server: TestServer;
  let smtp: SmtpReceiver;

  before(async () => {
    smtp = await startSmtpReceiver();
    server = await startServer({ SMTP_URL: smtp.url });
  });
  after(async () => {
    await server?.close();
    await smtp?.close();
  });

  it('delivers the reset mail to the SMTP server and the token works', async () => {
    const key = server.keys.live.application_key;
    await register(server, 'bob@example.com', PASSWORD, key);
    const arrived = smtp.nextMail();
    const forgot = await server.request('POST', '/v1/auth/password/forgot', { basic: key, json: { email: 'bob@example.com' } });
    assert.equal(forgot.status, 202);
    await arrived;
    assert.equal(smtp.received.length, 1, JSON.stringify(smtp.received));
    assert.deepEqual(smtp.received[0]?.to, ['bob@example.com']);
    assert.match(smtp.received[0]?.data ?? '', /Subject: Reset your password/);
    const token = resetTokenIn(smtp.received[0]?.data ?? '');
    const reset = await server.request('POST', '/v1/auth/password/reset', { basic: key, json: { token, password: 'smtp delivered pw' } });
    assert.equal(reset.status, 204);
    assert.equal((await login(server, 'bob@example.com', 'smtp delivered pw', key)).status, 200);
    const files = await fs.readdir(path.join(server.dataDir, 'mail')).catch(() => []);
    assert.equal(files.length, 0, 'with SMTP_URL no .eml file is written');
  });
});
