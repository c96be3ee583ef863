import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BusEvent } from '../../../core/events.ts';
import type { Principal } from '../../../core/principal.ts';
import { canSee, parseConnectPayload, refusalFor, subscriptionFor, tokenExpiry } from './notifications.ts';

const event = (over: Partial<BusEvent>): BusEvent => ({
  event_id: 'evt_000000000001',
  type: 'File_create',
  tenant_id: 't1',
  environment: 'test',
  occurred_at: new Date().toISOString(),
  actor: { type: 'user', id: 'u1' },
  owner_id: 'u1',
  data: { file: { id: 'f1' } },
  ...over,
});

describe('notification rules', () => {
  it('parses connect payloads strictly', () => {
    assert.deepEqual(parseConnectPayload('User_connect', { token: 'abc' }), { credential: 'abc', since: null });
    assert.deepEqual(parseConnectPayload('Admin_connect', { key: 'k', since: 'evt_1' }), { credential: 'k', since: 'evt_1' });
    assert.equal(parseConnectPayload('User_connect', { key: 'k' }), null, 'User_connect takes a token');
    for (const bad of [null, 'x', 42, [], {}, { token: '' }, { token: 7 }, { token: 'a', since: 5 }]) {
      assert.equal(parseConnectPayload('User_connect', bad), null, JSON.stringify(bad));
    }
  });

  it('gives user subscriptions to users and admin subscriptions to account keys and admins only', () => {
    const user = { kind: 'user', userId: 'u1', tenantId: 't1', environment: 'test', role: 'user' } as const;
    const admin = { ...user, role: 'admin' } as const;
    const key = { kind: 'account_key', keyId: 'k', tenantId: 't1', environment: 'test' } as const;
    const app: Principal = { kind: 'application_key', keyId: 'a', tenantId: 't1', environment: 'test', scopes: ['files:read'] };
    assert.equal(subscriptionFor('User_connect', user)?.scope, 'user');
    assert.equal(subscriptionFor('User_connect', key), null);
    assert.equal(subscriptionFor('Admin_connect', user), null);
    assert.equal(subscriptionFor('Admin_connect', admin)?.scope, 'admin');
    assert.equal(subscriptionFor('Admin_connect', key)?.scope, 'admin');
    assert.equal(subscriptionFor('Admin_connect', app), null);
  });

  it('lets a subscription see only its tenant, environment and (for users) own files', () => {
    const mine = { scope: 'user', tenantId: 't1', environment: 'test', userId: 'u1' } as const;
    const admin = { scope: 'admin', tenantId: 't1', environment: 'test', userId: null } as const;
    assert.equal(canSee(mine, event({})), true);
    assert.equal(canSee(mine, event({ owner_id: 'u2' })), false);
    assert.equal(canSee(admin, event({ owner_id: 'u2' })), true);
    assert.equal(canSee(admin, event({ tenant_id: 't2' })), false);
    assert.equal(canSee(admin, event({ environment: 'live' })), false);
    assert.equal(canSee(admin, event({ type: 'Test_event' })), false);
  });

  it('refuses client-emitted events with stable codes', () => {
    for (const type of ['File_create', 'File_update', 'File_delete']) assert.equal(refusalFor(type), 'forbidden');
    for (const type of ['Some_event', 'Notify_File_create', 'Subscription_end', '']) assert.equal(refusalFor(type), 'unknown_event');
  });

  it('reads a JWT expiry without trusting anything else', () => {
    const payload = Buffer.from(JSON.stringify({ exp: 1234 })).toString('base64url');
    assert.equal(tokenExpiry(`h.${payload}.s`), 1234);
    assert.equal(tokenExpiry('acc_key_test'), null);
    assert.equal(tokenExpiry('a.!!!.c'), null);
  });
});
