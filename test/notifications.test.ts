import assert from 'node:assert/strict';
import { createPrivateKey, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { decodeJwt, decodeProtectedHeader, SignJWT } from 'jose';
import { sql } from 'kysely';
import pg from 'pg';
import pino from 'pino';
import { Registry } from 'prom-client';
import { OutboxBus } from '../src/adapters/bus/outbox.ts';
import type { Db } from '../src/adapters/db/pg.ts';
import type { BusEvent } from '../src/core/events.ts';
import { type ConsumerOptions, type EventBus, lockSubject } from '../src/core/ports.ts';
import { SecretBox } from '../src/core/secret-box.ts';
import { createNotificationsService } from '../src/services/notifications/plugin.ts';
import { createTenant, until, uploadRaw } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { inProcessOnly } from './helpers/shape.ts';
import { connect, connected, connectV3, emitWithAck, type Inbox, nextEvent } from './helpers/sockets.ts';

const PASSWORD = 'correct horse battery';

interface User {
  access_token: string;
  user: { id: string };
}

describe('notifications over Socket.IO', () => {
  let server: TestServer;
  let alice: User;
  let bob: User;
  let boss: User;
  let other: Awaited<ReturnType<typeof createTenant>>;
  const open: Inbox[] = [];
  const track = (inbox: Inbox) => {
    open.push(inbox);
    return inbox;
  };

  async function register(email: string, key = server.keys.test.application_key): Promise<User> {
    const response = await server.request('POST', '/v1/auth/register', { basic: key, json: { email, password: PASSWORD, name: email } });
    assert.equal(response.status, 201, response.text);
    return response.json;
  }

  async function upload(token: string, name: string, content = `content of ${name}`) {
    const response = await uploadRaw(server, token, content, { name, contentType: 'text/plain' });
    assert.equal(response.status, 201, response.text);
    return response.json as { id: string; name: string; sha256: string };
  }

  async function subscribe(event: 'User_connect' | 'Admin_connect', payload: Record<string, unknown>, options = {}): Promise<Inbox> {
    const inbox = track(connect(server, options));
    await connected(inbox.socket);
    const ack = await emitWithAck(inbox.socket, event, payload);
    assert.equal(ack.ok, true, JSON.stringify(ack));
    return inbox;
  }

  /**
   * A copy of a real access token that expires in `seconds`, signed with the server's own
   * test-environment key (unsealed from the database with the installation's secret key, as in
   * identity-jwt.test.ts): access tokens live 15 minutes and no setting shortens them.
   */
  async function shortLived(token: string, seconds: number): Promise<string> {
    const secret = server.secretKey;
    const { kid } = decodeProtectedHeader(token);
    const { rows } = await sql<{ private_enc: Buffer }>`select private_enc from identity.signing_key where kid = ${String(kid)}`.execute(
      server.app.databases.environments.test,
    );
    assert.ok(rows[0], 'the signing key of the token');
    const privateKey = createPrivateKey({ key: new SecretBox(secret).open(rows[0].private_enc, `signing-key:test:${kid}`), format: 'der', type: 'pkcs8' });
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ ...decodeJwt(token), iat: now, exp: now + seconds, jti: randomBytes(12).toString('base64url') })
      .setProtectedHeader({ alg: 'EdDSA', kid: String(kid), typ: 'at+jwt' })
      .sign(privateKey);
  }

  before(async () => {
    server = await startServer({ BANTU_CORS_ORIGINS: 'https://tool.example.com', BANTU_SOCKET_AUTH_TIMEOUT_MS: '1500', BANTU_SOCKET_RECHECK_MS: '300' });
    alice = await register('alice@example.com');
    bob = await register('bob@example.com');
    const created = await server.request('POST', '/v1/users', {
      basic: server.keys.test.account_key,
      json: { email: 'boss@example.com', password: PASSWORD, name: 'Boss', role: 'admin' },
    });
    assert.equal(created.status, 201, created.text);
    const login = await server.request('POST', '/v1/auth/login', { basic: server.keys.test.application_key, json: { email: 'boss@example.com', password: PASSWORD } });
    boss = login.json;
    other = await createTenant(server, 'Other Co');
  });
  after(async () => {
    for (const inbox of open) inbox.close();
    await server?.close();
  });

  it("a user sees their own files' changes, in order, and not another user's", async () => {
    const inbox = await subscribe('User_connect', { token: alice.access_token });
    await upload(bob.access_token, 'bob-secret.txt');
    const file = await upload(alice.access_token, 'alice-1.txt');
    const renamed = await server.request('PATCH', `/v1/files/${file.id}`, { auth: alice.access_token, json: { name: 'alice-1-renamed.txt' } });
    assert.equal(renamed.status, 200, renamed.text);
    const deleted = await server.request('DELETE', `/v1/files/${file.id}`, { auth: alice.access_token });
    assert.equal(deleted.status, 204);
    await inbox.waitFor((e) => e.name === 'Notify_File_delete', 'the delete');

    assert.deepEqual(inbox.events.map((e) => e.name), ['Notify_File_create', 'Notify_File_update', 'Notify_File_delete']);
    const [create, update, remove] = inbox.events.map((e) => e.payload);
    assert.equal(create?.type, 'File_create');
    assert.equal(create?.file.id, file.id);
    assert.equal(create?.file.name, 'alice-1.txt');
    assert.deepEqual(create?.actor, { type: 'user', id: alice.user.id });
    assert.match(create?.event_id ?? '', /^evt_/);
    assert.ok(!Number.isNaN(Date.parse(create?.occurred_at ?? '')));
    assert.equal(update?.file.name, 'alice-1-renamed.txt');
    assert.equal(remove?.type, 'File_delete');
    assert.equal(remove?.file.id, file.id, 'a delete carries the last state');
    assert.ok(!JSON.stringify(inbox.events).includes('bob-secret'), "another user's file never reaches her");
  });

  it('an admin, by account key or by admin user token, sees every file of the tenant and environment', async () => {
    const byKey = await subscribe('Admin_connect', { key: server.keys.test.account_key });
    const byToken = await subscribe('Admin_connect', { token: boss.access_token });
    await upload(alice.access_token, 'for-admins-a.txt');
    await upload(bob.access_token, 'for-admins-b.txt');
    for (const inbox of [byKey, byToken]) {
      await inbox.waitFor((e) => e.payload.file.name === 'for-admins-a.txt', "alice's file");
      await inbox.waitFor((e) => e.payload.file.name === 'for-admins-b.txt', "bob's file");
    }
  });

  it('keeps tenants and environments apart', async () => {
    const otherTenant = await subscribe('Admin_connect', { key: other.test.account_key });
    const liveEnv = await subscribe('Admin_connect', { key: server.keys.live.account_key });
    await upload(alice.access_token, 'tenant-one-test-env.txt');
    // A marker in each subscriber's own scope: once it arrives, anything leaked would have too.
    await uploadRaw(server, other.test.account_key, 'm', { name: 'marker-other.txt' });
    await uploadRaw(server, server.keys.live.account_key, 'm', { name: 'marker-live.txt' });
    await otherTenant.waitFor((e) => e.payload.file.name === 'marker-other.txt', 'the other tenant marker');
    await liveEnv.waitFor((e) => e.payload.file.name === 'marker-live.txt', 'the live marker');
    assert.deepEqual(otherTenant.events.map((e) => e.payload.file.name), ['marker-other.txt']);
    assert.deepEqual(liveEnv.events.map((e) => e.payload.file.name), ['marker-live.txt']);
  });

  it('relays nothing a client emits as File_*', async () => {
    const watcher = await subscribe('Admin_connect', { key: server.keys.test.account_key });
    const forger = await subscribe('User_connect', { token: alice.access_token });
    for (const type of ['File_create', 'File_update', 'File_delete']) {
      const ack = await emitWithAck(forger.socket, type, { event_id: 'evt_forged', type, file: { id: 'forged', name: 'forged.txt' } });
      assert.deepEqual(ack, { ok: false, code: 'forbidden' });
    }
    await upload(alice.access_token, 'after-forgery.txt');
    await watcher.waitFor((e) => e.payload.file.name === 'after-forgery.txt', 'the real change');
    assert.ok(!JSON.stringify([...watcher.events, ...forger.events]).includes('forged'));
  });

  it('replays exactly the changes missed while disconnected, in order, then continues live without duplicates', async () => {
    const first = await subscribe('User_connect', { token: alice.access_token });
    const seen = await upload(alice.access_token, 'replay-0.txt');
    const last = await first.waitFor((e) => e.payload.file.id === seen.id, 'the first change');
    first.close();

    const missed = [await upload(alice.access_token, 'replay-1.txt'), await upload(alice.access_token, 'replay-2.txt')];
    const patched = await server.request('PATCH', `/v1/files/${missed[0]?.id}`, { auth: alice.access_token, json: { name: 'replay-1b.txt' } });
    assert.equal(patched.status, 200);
    await upload(bob.access_token, 'not-for-alice.txt');

    const second = await subscribe('User_connect', { token: alice.access_token, since: last.payload.event_id });
    await second.waitFor((e) => e.payload.file.name === 'replay-1b.txt', 'the replayed rename');
    const live = await upload(alice.access_token, 'replay-live.txt');
    await second.waitFor((e) => e.payload.file.id === live.id, 'the live change after the replay');
    assert.deepEqual(
      second.events.map((e) => `${e.name}:${e.payload.file.name}`),
      ['Notify_File_create:replay-1.txt', 'Notify_File_create:replay-2.txt', 'Notify_File_update:replay-1b.txt', 'Notify_File_create:replay-live.txt'],
    );
    assert.equal(new Set(second.events.map((e) => e.payload.event_id)).size, second.events.length, 'no duplicate at the seam');
  });

  it('answers bad connects with a stable code', async () => {
    const inbox = track(connect(server));
    await connected(inbox.socket);
    assert.deepEqual(await emitWithAck(inbox.socket, 'User_connect', {}), { ok: false, code: 'invalid_payload' });
    assert.deepEqual(await emitWithAck(inbox.socket, 'User_connect', 'a string'), { ok: false, code: 'invalid_payload' });
    assert.deepEqual(await emitWithAck(inbox.socket, 'User_connect', { token: 'not.a.jwt' }), { ok: false, code: 'unauthorized' });
    assert.deepEqual(await emitWithAck(inbox.socket, 'Admin_connect', { token: alice.access_token }), { ok: false, code: 'unauthorized' }, 'a plain user is no admin');
    assert.deepEqual(await emitWithAck(inbox.socket, 'User_connect', { token: alice.access_token, since: 'evt_999999999999' }), { ok: false, code: 'replay_unavailable' });
    assert.deepEqual(await emitWithAck(inbox.socket, 'Admin_connect', { key: other.live.account_key, since: 'evt_000000000001' }), { ok: false, code: 'replay_unavailable' }, "another tenant's event id is unknown here");
  });

  it('accepts the credentials in the handshake, and refuses bad ones there', async () => {
    const inbox = track(connect(server, { auth: { token: alice.access_token } }));
    const acked = nextEvent(inbox.socket, 'User_connect_ack'); // listening before the connection: the answer may follow at once
    await connected(inbox.socket);
    assert.deepEqual(await acked, { ok: true, user_id: alice.user.id });
    const file = await upload(alice.access_token, 'handshake.txt');
    await inbox.waitFor((e) => e.payload.file.id === file.id, 'the change');

    const refused = track(connect(server, { auth: { key: 'acc_wrong_test' } }));
    await assert.rejects(connected(refused.socket), /unauthorized/);
  });

  it('works with a Socket.IO v3 client (websocket and polling) and with the polling transport', async () => {
    const v3Socket = track(connectV3(server));
    const v3Polling = track(connectV3(server, { transports: ['polling'] }));
    for (const inbox of [v3Socket, v3Polling]) {
      await connected(inbox.socket);
      // The v3 client has no emitWithAck: a plain ack callback.
      const ack = await new Promise<{ ok: boolean }>((resolve) => inbox.socket.emit('User_connect', { token: alice.access_token }, resolve));
      assert.equal(ack.ok, true);
    }
    const polling = await subscribe('User_connect', { token: alice.access_token }, { transports: ['polling'] });
    const file = await upload(alice.access_token, 'v3-and-polling.txt');
    await v3Socket.waitFor((e) => e.payload.file.id === file.id, 'the change on the v3 client');
    await v3Polling.waitFor((e) => e.payload.file.id === file.id, 'the change on the v3 client over polling');
    await polling.waitFor((e) => e.payload.file.id === file.id, 'the change over polling');
    assert.equal(polling.socket.io.engine.transport.name, 'polling');
    assert.equal((v3Polling.socket.io.engine as unknown as { transport: { name: string } }).transport.name, 'polling');
  });

  it('disconnects a socket that does not authenticate in time', async () => {
    const inbox = track(connect(server));
    await connected(inbox.socket);
    const reason = await new Promise<string>((resolve) => inbox.socket.once('disconnect', resolve));
    assert.equal(reason, 'io server disconnect');
  });

  it('ends a subscription whose key is revoked', async () => {
    const created = await server.request('POST', '/v1/keys', { basic: server.keys.test.account_key, json: { kind: 'account', name: 'short-lived' } });
    assert.equal(created.status, 201, created.text);
    const inbox = await subscribe('Admin_connect', { key: created.json.key });
    const ended = new Promise<{ code: string }>((resolve) => inbox.socket.once('Subscription_end', resolve));
    const revoked = await server.request('DELETE', `/v1/keys/${created.json.id}`, { basic: server.keys.test.account_key });
    assert.equal(revoked.status, 204);
    assert.deepEqual(await ended, { code: 'unauthorized' });
  });

  it('allows a configured browser origin and refuses another', async () => {
    const allowed = track(connect(server, { transports: ['polling'], extraHeaders: { origin: 'https://tool.example.com' } }));
    await connected(allowed.socket);
    const refused = track(connect(server, { transports: ['polling'], extraHeaders: { origin: 'https://evil.example.com' } }));
    await assert.rejects(connected(refused.socket));
  });

  it('answers a connect sent with only an ack function, one sent without an ack, and unknown events, with stable codes', async () => {
    const inbox = track(connect(server));
    await connected(inbox.socket);
    // Socket.IO hands the ack over as the only argument: it must still be called.
    assert.deepEqual(await emitWithAck(inbox.socket, 'User_connect'), { ok: false, code: 'invalid_payload' });
    assert.deepEqual(await emitWithAck(inbox.socket, 'Admin_connect'), { ok: false, code: 'invalid_payload' });
    // No ack function: the answer comes as an event, and the socket stays usable.
    const noPayload = nextEvent(inbox.socket, 'Admin_connect_ack');
    inbox.socket.emit('Admin_connect');
    assert.deepEqual(await noPayload, { ok: false, code: 'invalid_payload' });
    const bad = nextEvent(inbox.socket, 'User_connect_ack');
    inbox.socket.emit('User_connect', { token: 'not.a.jwt' });
    assert.deepEqual(await bad, { ok: false, code: 'unauthorized' });
    const good = nextEvent(inbox.socket, 'User_connect_ack');
    inbox.socket.emit('User_connect', { token: alice.access_token });
    assert.deepEqual(await good, { ok: true, user_id: alice.user.id });
    // Anything else with an ack: `unknown_event` (File_* is `forbidden`, see above); without one, ignored.
    inbox.socket.emit('Some_event', { x: 1 });
    assert.deepEqual(await emitWithAck(inbox.socket, 'Some_event', { x: 1 }), { ok: false, code: 'unknown_event' });
    assert.deepEqual(await emitWithAck(inbox.socket, 'Some_event'), { ok: false, code: 'unknown_event' });
    assert.deepEqual(await emitWithAck(inbox.socket, 'File_delete'), { ok: false, code: 'forbidden' });
    const file = await upload(alice.access_token, 'after-odd-emits.txt');
    await inbox.waitFor((e) => e.payload.file.id === file.id, 'the change on the same socket');
    assert.ok(inbox.socket.connected);
  });

  it('accepts an account key in the handshake as Admin_connect: every file of the tenant', async () => {
    const inbox = track(connect(server, { auth: { key: server.keys.test.account_key } }));
    const acked = nextEvent(inbox.socket, 'Admin_connect_ack');
    await connected(inbox.socket);
    assert.deepEqual(await acked, { ok: true, user_id: null });
    const a = await upload(alice.access_token, 'handshake-key-a.txt');
    const b = await upload(bob.access_token, 'handshake-key-b.txt');
    await inbox.waitFor((e) => e.payload.file.id === a.id, "alice's file");
    await inbox.waitFor((e) => e.payload.file.id === b.id, "bob's file");
  });

  it("treats an admin user's token in the handshake as User_connect (own files), and Admin_connect on the socket widens it", async () => {
    const inbox = track(connect(server, { auth: { token: boss.access_token } }));
    const acked = nextEvent(inbox.socket, 'User_connect_ack');
    await connected(inbox.socket);
    assert.deepEqual(await acked, { ok: true, user_id: boss.user.id });
    await upload(alice.access_token, 'not-in-boss-handshake.txt');
    const own = await upload(boss.access_token, 'boss-own.txt');
    await inbox.waitFor((e) => e.payload.file.id === own.id, "the admin's own file");
    assert.deepEqual(inbox.events.map((e) => e.payload.file.name), ['boss-own.txt'], 'a handshake token is a user subscription, whatever the role');

    assert.deepEqual(await emitWithAck(inbox.socket, 'Admin_connect', { token: boss.access_token }), { ok: true, user_id: boss.user.id });
    const other = await upload(alice.access_token, 'in-boss-admin.txt');
    await inbox.waitFor((e) => e.payload.file.id === other.id, "alice's file once the admin subscribed");
  });

  it('ends a subscription when the user token expires, and refuses an expired token', async () => {
    const token = await shortLived(alice.access_token, 3);
    const inbox = await subscribe('User_connect', { token });
    const ended = nextEvent<{ code: string }>(inbox.socket, 'Subscription_end', 15_000);
    const disconnected = new Promise<string>((resolve) => inbox.socket.once('disconnect', resolve));
    const file = await upload(alice.access_token, 'before-expiry.txt');
    await inbox.waitFor((e) => e.payload.file.id === file.id, 'a change while the token is valid');
    assert.deepEqual(await ended, { code: 'token_expired' });
    assert.equal(await disconnected, 'io server disconnect');

    const again = track(connect(server));
    await connected(again.socket);
    assert.deepEqual(await emitWithAck(again.socket, 'User_connect', { token }), { ok: false, code: 'unauthorized' });
    const refused = track(connect(server, { auth: { token } }));
    await assert.rejects(connected(refused.socket), /unauthorized/);
  });

  it('replays while files keep changing during the catch-up: every event exactly once, in order per file', async () => {
    const carol = await register('carol@example.com');
    const tenantId = String(decodeJwt(carol.access_token).tid);
    const first = await subscribe('User_connect', { token: carol.access_token });
    const files = await Promise.all(Array.from({ length: 6 }, (_, f) => upload(carol.access_token, `seam-${f}-0.txt`)));
    await Promise.all(files.map((file) => first.waitFor((e) => e.payload.file.id === file.id, 'a create')));
    const since = first.events[first.events.length - 1]?.payload.event_id as string;
    first.close();

    let renames = 0;
    const rename = async (file: { id: string }, f: number) => {
      const n = ++renames;
      const response = await server.request('PATCH', `/v1/files/${file.id}`, { auth: carol.access_token, json: { name: `seam-${f}-${n}.txt` } });
      assert.equal(response.status, 200, response.text);
    };
    // A backlog of more than one replay page (500), written by one writer per file.
    await Promise.all(
      files.map(async (file, f) => {
        for (let i = 0; i < 90; i++) await rename(file, f);
      }),
    );
    const backlog = renames;

    // Writers keep going while sockets subscribe with `since` and catch up. The seam is
    // crossed several times, at different moments: each crossing may land anywhere in the
    // live consumer's progress, so one alone could pass by luck.
    let stop = false;
    const writers = Promise.all(
      files.map(async (file, f) => {
        while (!stop) await rename(file, f);
      }),
    );
    const sockets: Inbox[] = [];
    let ackedAt = 0;
    try {
      for (let k = 0; k < 4; k++) {
        await until(() => renames >= backlog + 12 * (k + 1), 'writes in flight');
        sockets.push(await subscribe('User_connect', { token: carol.access_token, since }));
        ackedAt = renames;
      }
      await until(() => sockets.every((s) => s.events.length >= backlog) && renames >= ackedAt + 60, 'the catch-ups under writes');
    } finally {
      stop = true;
      await writers;
    }
    const marker = await upload(carol.access_token, 'seam-marker.txt');
    // The read shows only what is safely visible: below the oldest transaction still running
    // anywhere in the cluster. On a shared PostgreSQL (npm run test:machine) another test's
    // transaction can hold it back for a moment, so read until the marker is in.
    let expected = await server.app.bus.readSince('test', since, 100_000, { tenantId, ownerId: carol.user.id });
    for (let i = 0; i < 100 && !expected?.some((e) => (e.data.file as { id: string }).id === marker.id); i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      expected = await server.app.bus.readSince('test', since, 100_000, { tenantId, ownerId: carol.user.id });
    }
    assert.ok(expected?.some((e) => (e.data.file as { id: string }).id === marker.id), 'the history reaches the marker');
    assert.ok(expected && expected.length > backlog + 60, `history: ${expected?.length}`);
    const perFile = (events: Array<{ event_id: string; file: { id: string } }>) => {
      const order = new Map<string, string[]>();
      for (const e of events) order.set(e.file.id, [...(order.get(e.file.id) ?? []), e.event_id]);
      return order;
    };
    const expectedPerFile = perFile(expected.map((e) => ({ event_id: e.event_id, file: e.data.file as { id: string } })));
    for (const [k, inbox] of sockets.entries()) {
      await inbox.waitFor((e) => e.payload.file.id === marker.id, 'the marker after the writers');
      const received = inbox.events.map((e) => e.payload.event_id);
      assert.equal(new Set(received).size, received.length, `socket ${k}: no event twice`);
      assert.deepEqual([...received].sort(), expected.map((e) => e.event_id).sort(), `socket ${k}: none missing, none extra`);
      assert.deepEqual(perFile(inbox.events.map((e) => e.payload)), expectedPerFile, `socket ${k}: in commit order per file`);
    }
  });

  it('answers replay_unavailable for a since pruned from the outbox, and keeps it replayable within the retention', async () => {
    const inbox = await subscribe('User_connect', { token: alice.access_token });
    const file = await upload(alice.access_token, 'to-be-pruned.txt');
    const since = (await inbox.waitFor((e) => e.payload.file.id === file.id, 'the change')).payload.event_id;
    inbox.close();
    await upload(alice.access_token, 'after-the-pruned-one.txt');

    // Every consumer has passed it, but it is younger than the retention: prune keeps it. The
    // notifications relay is ephemeral (no cursor, it holds nothing back): the backup's cursor does.
    await until(async () => (await server.app.bus.status('backup')).every((s) => s.pending === 0), 'the backup to pass it');
    await server.app.bus.prune(24);
    const kept = track(connect(server));
    await connected(kept.socket);
    assert.deepEqual(await emitWithAck(kept.socket, 'User_connect', { token: alice.access_token, since }), { ok: true, user_id: alice.user.id });
    await kept.waitFor((e) => e.payload.file.name === 'after-the-pruned-one.txt', 'the replay');

    // A zero-hour retention prunes whatever every consumer (backup included) has passed.
    await until(async () => {
      await server.app.bus.prune(0);
      return (await server.app.bus.readSince('test', since, 1)) === null;
    }, 'the prune');
    const late = track(connect(server));
    await connected(late.socket);
    assert.deepEqual(await emitWithAck(late.socket, 'User_connect', { token: alice.access_token, since }), { ok: false, code: 'replay_unavailable' });
    assert.deepEqual(await emitWithAck(late.socket, 'Admin_connect', { key: server.keys.test.account_key, since }), { ok: false, code: 'replay_unavailable' });
    // In the handshake the credentials are good, so the socket connects and is told (then may resubscribe without `since`).
    const handshake = track(connect(server, { auth: { token: alice.access_token, since } }));
    const answer = nextEvent(handshake.socket, 'User_connect_ack');
    await connected(handshake.socket);
    assert.deepEqual(await answer, { ok: false, code: 'replay_unavailable' });
    assert.deepEqual(await emitWithAck(handshake.socket, 'User_connect', { token: alice.access_token }), { ok: true, user_id: alice.user.id });
  });

  it('a live event the bus hands over twice (at least once) reaches a socket once', { skip: inProcessOnly('builds a second notifications endpoint on app.identity.verifiers in-process') }, async () => {
    // A second endpoint whose live feed is this test: it hands the same events over again,
    // as a relay republishing outside JetStream's duplicate window, or a redelivery, would.
    const bus = server.app.bus;
    const tls = { cert: await fs.readFile(path.join(server.dataDir, 'tls', 'cert.pem')), key: await fs.readFile(path.join(server.dataDir, 'tls', 'key.pem')) };
    const httpsServer = https.createServer(tls);
    const endpoint = createNotificationsService({
      bus: { readSince: bus.readSince.bind(bus) } as unknown as EventBus,
      verifiers: server.app.identity.verifiers,
      logger: pino({ level: 'silent' }),
      metrics: new Registry(),
      corsOrigins: [],
      authTimeoutMs: 10_000,
    });
    const feed = endpoint.consumers[0];
    assert.ok(feed && !feed.batch);
    endpoint.attach(httpsServer);
    await new Promise<void>((resolve) => httpsServer.listen(0, '127.0.0.1', resolve));
    const target = { ...server, url: `https://127.0.0.1:${(httpsServer.address() as AddressInfo).port}` };
    try {
      const erin = await register('erin@example.com');
      const since = (await bus.readSince('test', null, 100_000))?.at(-1)?.event_id ?? null;
      for (const name of ['dup-0.txt', 'dup-1.txt']) await upload(erin.access_token, name);
      // readSince shows what is safely visible: a transaction elsewhere on a shared server may hold that back a moment.
      let events: BusEvent[] = [];
      await until(async () => {
        events = (await bus.readSince('test', since, 100))?.filter((event) => event.owner_id === erin.user.id) ?? [];
        return events.length >= 2;
      }, "erin's two events");
      assert.equal(events.length, 2);
      const inbox = track(connect(target));
      await connected(inbox.socket);
      assert.deepEqual(await emitWithAck(inbox.socket, 'User_connect', { token: erin.access_token }), { ok: true, user_id: erin.user.id });
      const [first, second] = events as [BusEvent, BusEvent];
      for (const event of [first, first, second, first, second]) await feed.handle(event);
      await inbox.waitFor((e) => e.payload.file.name === 'dup-1.txt', 'the second event');
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.deepEqual(inbox.events.map((e) => e.payload.event_id), [first.event_id, second.event_id], 'each event once, in order');
    } finally {
      await endpoint.close();
      await new Promise((resolve) => httpsServer.close(resolve));
    }
  });

  it('refuses a since whose backlog exceeds the replay cap before sending anything, and replays a backlog at the cap in full', { skip: inProcessOnly('builds a second notifications endpoint on app.identity.verifiers in-process') }, async () => {
    // A second notifications endpoint with a cap of 3 events, on an HTTPS server of its own,
    // replaying from this server's outbox. It has no live feed: consumers are registered
    // before the bus starts, and the server's own endpoint has that one.
    const bus = server.app.bus;
    const replayOnly = { readSince: bus.readSince.bind(bus), consume: () => undefined } as unknown as EventBus;
    const tls = { cert: await fs.readFile(path.join(server.dataDir, 'tls', 'cert.pem')), key: await fs.readFile(path.join(server.dataDir, 'tls', 'key.pem')) };
    const httpsServer = https.createServer(tls);
    const capped = createNotificationsService({
      bus: replayOnly,
      verifiers: server.app.identity.verifiers,
      logger: pino({ level: 'silent' }),
      metrics: new Registry(),
      corsOrigins: [],
      authTimeoutMs: 10_000,
      replayMax: 3,
    });
    capped.attach(httpsServer);
    await new Promise<void>((resolve) => httpsServer.listen(0, '127.0.0.1', resolve));
    const target = { ...server, url: `https://127.0.0.1:${(httpsServer.address() as AddressInfo).port}` };
    try {
      const dave = await register('dave@example.com');
      const live = await subscribe('User_connect', { token: dave.access_token });
      const names = ['cap-0.txt', 'cap-1.txt', 'cap-2.txt', 'cap-3.txt', 'cap-4.txt'];
      for (const name of names) {
        await upload(dave.access_token, name);
        if (name === 'cap-2.txt') await upload(bob.access_token, 'cap-bob.txt'); // the admin's backlog, not dave's
      }
      await live.waitFor((e) => e.payload.file.name === 'cap-4.txt', 'the last change live');
      const ids = live.events.map((e) => e.payload.event_id);
      assert.deepEqual(live.events.map((e) => e.payload.file.name), names);

      // After cap-0: 4 of dave's events, one more than the cap. Refused, and nothing sent.
      const refused = track(connect(target));
      await connected(refused.socket);
      assert.deepEqual(await emitWithAck(refused.socket, 'User_connect', { token: dave.access_token, since: ids[0] }), { ok: false, code: 'replay_unavailable' });
      const inHandshake = track(connect(target, { auth: { token: dave.access_token, since: ids[0] } }));
      const answer = nextEvent(inHandshake.socket, 'User_connect_ack');
      await connected(inHandshake.socket);
      assert.deepEqual(await answer, { ok: false, code: 'replay_unavailable' });
      // After cap-1, an admin sees 4 events (bob's too): refused as well.
      const admin = track(connect(target));
      await connected(admin.socket);
      assert.deepEqual(await emitWithAck(admin.socket, 'Admin_connect', { key: server.keys.test.account_key, since: ids[1] }), { ok: false, code: 'replay_unavailable' });

      // After cap-1, dave's backlog is exactly the cap: replayed in full, in order.
      const replayed = track(connect(target));
      await connected(replayed.socket);
      assert.deepEqual(await emitWithAck(replayed.socket, 'User_connect', { token: dave.access_token, since: ids[1] }), { ok: true, user_id: dave.user.id });
      await replayed.waitFor((e) => e.payload.file.name === 'cap-4.txt', 'the replay at the cap');
      assert.deepEqual(replayed.events.map((e) => e.payload.file.name), ['cap-2.txt', 'cap-3.txt', 'cap-4.txt']);

      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const inbox of [refused, inHandshake, admin]) assert.deepEqual(inbox.events, [], 'a refused replay sends nothing');
    } finally {
      await capped.close();
      await new Promise((resolve) => httpsServer.close(resolve));
    }
  });

  /**
   * The notifications consumer takes events straight from their commit's notification (the
   * outbox's way of honouring `lowLatency`), in the order the read would have delivered them:
   * the replay seam and the per-file order rely on it. Checked on a bus of its own, on this
   * server's databases, with a consumer of that kind.
   */
  describe('delivery from the notification (the bus mode of the notifications consumer)', () => {
    const TENANT = 'ten_notify_order';
    const actor = { type: 'system' as const, id: 'test' };
    const fromNotification = (types: string[]): ConsumerOptions => ({ types, lowLatency: true });
    const append = (db: Db, bus: OutboxBus, type: string, data: Record<string, unknown>) =>
      db.transaction().execute((trx) => bus.append(trx, 'test', { type, tenant_id: TENANT, actor, data }));

    // Delivery ahead of the read needs, at each append, no older transaction running anywhere
    // in the PostgreSQL cluster. On the machine's shared one (npm run test:machine) other test
    // files' transactions run at any moment, so this runs on the embedded one (npm test, CI).
    const sharedCluster = process.env.BANTU_TEST_DATABASE_URL ? 'the machine PostgreSQL is shared: other transactions hold delivery ahead back' : false;
    it('delivers from the notification, without the read: events keep coming while the read is stuck', { skip: sharedCluster }, async () => {
      const db = server.app.databases.environments.test;
      const bus = new OutboxBus(server.app.databases, pino({ level: 'silent' }), { pollMs: 100 });
      const seen: string[] = [];
      bus.consume('notify-ahead', async (event) => void seen.push(event.data.n as string), fromNotification(['Ahead_event']));
      await bus.start();
      const blocker = new pg.Client({ connectionString: server.app.databases.environmentUrls.test });
      await blocker.connect();
      try {
        await append(db, bus, 'Ahead_event', { n: 'first' });
        await until(() => seen.includes('first'), 'the first event');
        // The read saves its cursor after each read. With the cursor table locked by a
        // transaction that has no id (so it holds no append back), the read stops there.
        await blocker.query('begin');
        await blocker.query('lock table bus.consumer_cursor in share mode');
        const xid = await blocker.query('select pg_current_xact_id_if_assigned() as xid');
        assert.equal(xid.rows[0].xid, null, 'the lock holds back no transaction');
        const next = ['a', 'b', 'c', 'd', 'e'];
        for (const n of next) await append(db, bus, 'Ahead_event', { n });
        await until(() => next.every((n) => seen.includes(n)), 'the events while the read is stuck', 10_000);
        assert.deepEqual(seen, ['first', ...next]);
        await blocker.query('commit');
        // The read then passes them without delivering them again.
        await append(db, bus, 'Ahead_event', { n: 'last' });
        await until(() => seen.includes('last'), 'the last event');
        await until(async () => (await bus.status('notify-ahead')).every((s) => s.pending === 0), 'the read to pass them');
        assert.deepEqual(seen, ['first', ...next, 'last'], 'none twice');
        // A notification with no position (an older version's append): nothing goes ahead
        // until the read has caught up again; nothing is lost or doubled meanwhile.
        await sql`select pg_notify('bantu_outbox', '')`.execute(db);
        for (const n of ['after-1', 'after-2']) await append(db, bus, 'Ahead_event', { n });
        await until(() => seen.includes('after-2'), 'the events after it');
        await append(db, bus, 'Ahead_event', { n: 'after-3' });
        await until(() => seen.includes('after-3'), 'one more');
        assert.deepEqual(seen, ['first', ...next, 'last', 'after-1', 'after-2', 'after-3']);
      } finally {
        await blocker.query('rollback').catch(() => undefined);
        await blocker.end();
        await bus.close();
      }
    });

    it('delivers concurrent writers in (xid, id) order, every event, each key in commit order, older transactions held open among them', async () => {
      const db = server.app.databases.environments.test;
      await sql`create table if not exists notify_order_subject (key text primary key, seq int not null default 0)`.execute(db);
      await sql`insert into notify_order_subject (key) select 'k' || g from generate_series(0, 3) g on conflict do nothing`.execute(db);
      const bus = new OutboxBus(server.app.databases, pino({ level: 'silent' }), { pollMs: 100 });
      const seen: BusEvent[] = [];
      bus.consume('notify-order', async (event) => void seen.push(event), fromNotification(['Order_event']));
      await bus.start();
      const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
      try {
        const writers = 6;
        const perWriter = 40;
        const committed: string[] = [];
        let stop = false;
        // Transactions with an id that append nothing, held open a while: what commits
        // behind them cannot go ahead of the read, and the read waits for them.
        const blockers = (async () => {
          while (!stop) {
            await db.transaction().execute(async (trx) => {
              await sql`select pg_current_xact_id()`.execute(trx);
              await sleep(30);
            });
            await sleep(40);
          }
        })();
        await Promise.all(
          Array.from({ length: writers }, async (_, w) => {
            for (let i = 0; i < perWriter; i++) {
              const key = `k${(w + i) % 4}`;
              const seq = await db.transaction().execute(async (trx) => {
                await lockSubject(trx, `notify-order:${key}`);
                const row = await sql<{ seq: number }>`update notify_order_subject set seq = seq + 1 where key = ${key} returning seq`.execute(trx);
                if (i % 5 === 0) await sleep(10); // an id taken, then younger ones commit first
                await bus.append(trx, 'test', { type: 'Order_event', tenant_id: TENANT, actor, data: { key, seq: row.rows[0]?.seq } });
                if (i % 7 === 0) await sleep(10); // appended, committing late
                return row.rows[0]?.seq as number;
              });
              committed.push(`${key}:${seq}`);
            }
          }),
        );
        stop = true;
        await blockers;
        await until(() => new Set(seen.map((e) => e.event_id)).size >= writers * perWriter, 'every event');
        const firsts = [...new Map(seen.map((e) => [e.event_id, e])).values()];
        assert.deepEqual(firsts.map((e) => `${e.data.key}:${e.data.seq}`).sort(), committed.sort(), 'every committed event, nothing else');
        const ids = firsts.map((e) => Number(e.event_id.slice(4)));
        const order = await sql<{ id: number }>`select id from bus.outbox where id = any(${ids}) order by xid, id`.execute(db);
        assert.deepEqual(ids, order.rows.map((r) => r.id), 'in (xid, id) order, as the read delivers');
        const lastSeq = new Map<string, number>();
        for (const event of firsts) {
          const key = event.data.key as string;
          assert.equal(event.data.seq, (lastSeq.get(key) ?? 0) + 1, `events of ${key} in commit order`);
          lastSeq.set(key, event.data.seq as number);
        }
        assert.equal(firsts.length, seen.length, 'none twice');
      } finally {
        await bus.close();
      }
    });
  });
});
