import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryCounterStore } from '../../../adapters/cache/memory.ts';
import { MemoryRevocationList } from '../../../adapters/cache/memory-revocations.ts';
import type { Databases } from '../../../adapters/db/pg.ts';
import { AppError, Errors } from '../../../core/errors.ts';
import type { RevocationList } from '../../../core/ports.ts';
import { SecretBox } from '../../../core/secret-box.ts';
import { generateKey, parseKey } from './api-keys.ts';
import { LoginThrottle } from './login-throttle.ts';
import { TokenRevocations } from './revocations.ts';
import type { AccessClaims } from './tokens.service.ts';

const SECRET = 'a'.repeat(43);

describe('SecretBox', () => {
  it('opens what it sealed, under the same secret and purpose only', () => {
    const box = new SecretBox(SECRET);
    const sealed = box.seal(Buffer.from('private key bytes'), 'signing-key:test:k1');
    assert.equal(box.open(sealed, 'signing-key:test:k1').toString(), 'private key bytes');
    assert.ok(!sealed.includes(Buffer.from('private key bytes')), 'not stored in clear');
    assert.throws(() => new SecretBox('b'.repeat(43)).open(sealed, 'signing-key:test:k1'), 'another secret');
    assert.throws(() => box.open(sealed, 'signing-key:live:k1'), 'another purpose');
    const tampered = Buffer.from(sealed);
    tampered[tampered.length - 1] = (tampered[tampered.length - 1] as number) ^ 1;
    assert.throws(() => box.open(tampered, 'signing-key:test:k1'), 'altered ciphertext');
    assert.notDeepEqual(box.seal(Buffer.from('x'), 'p'), box.seal(Buffer.from('x'), 'p'), 'a fresh IV every time');
    assert.throws(() => new SecretBox('short'), 'a short secret is refused');
  });
});

describe('LoginThrottle', () => {
  it('blocks an account after its limit until the window ends, and a success forgives', async () => {
    let now = 0;
    const throttle = new LoginThrottle(new MemoryCounterStore(1000, () => now), {
      perAccount: { max: 3, windowMs: 60_000 },
      perAddress: { max: 100, windowMs: 60_000 },
    });
    for (let i = 0; i < 3; i++) {
      await throttle.check('acct', '1.2.3.4');
      await throttle.failed('acct', '1.2.3.4');
    }
    const blocked = await throttle.check('acct', '1.2.3.4').then(() => null, (error: unknown) => error);
    assert.ok(blocked instanceof AppError);
    assert.equal(blocked.code, 'rate_limited');
    assert.equal(blocked.headers?.['Retry-After'], '60');
    await throttle.check('other', '1.2.3.4');
    now = 60_000;
    await throttle.check('acct', '1.2.3.4');
    await throttle.failed('acct', '1.2.3.4');
    await throttle.succeeded('acct');
    for (let i = 0; i < 3; i++) await throttle.failed('acct', '1.2.3.4');
    await assert.rejects(throttle.check('acct', '1.2.3.4'));
  });

  it('blocks an address that fails across many accounts', async () => {
    const throttle = new LoginThrottle(new MemoryCounterStore(), { perAccount: { max: 100, windowMs: 60_000 }, perAddress: { max: 5, windowMs: 60_000 } });
    for (let i = 0; i < 5; i++) await throttle.failed(`acct${i}`, '9.9.9.9');
    await assert.rejects(throttle.check('fresh', '9.9.9.9'));
    await throttle.check('fresh', '8.8.8.8');
  });
});

describe('TokenRevocations', () => {
  const claims = (userId: string, sessionId: string): AccessClaims => ({ userId, sessionId, tenantId: 'ten_1', environment: 'test', role: 'user', issuedAt: 0 });
  const quiet = { warn() {}, info() {} };
  // Never asked in these tests: a list that answers needs no database.
  const noDatabases = {} as Databases;

  it('refuses the tokens of a deleted user, and of an ended session, for one token lifetime', async () => {
    let now = 0;
    const revocations = new TokenRevocations({ list: new MemoryRevocationList(10, () => now), databases: noDatabases, lifetimeMs: 1000, logger: quiet, now: () => now });
    await revocations.userDeleted('usr_1');
    await revocations.sessionsEnded(['ses_2']);
    assert.equal(await revocations.isRevoked(claims('usr_1', 'ses_1')), true);
    assert.equal(await revocations.isRevoked(claims('usr_2', 'ses_2')), true);
    assert.equal(await revocations.isRevoked(claims('usr_2', 'ses_3')), false);
    now = 1000;
    assert.equal(await revocations.isRevoked(claims('usr_1', 'ses_1')), false);
  });

  it('names a revoked key for as long as a key cache holds it, and cannot tell when the list is down', async () => {
    let now = 0;
    let down = false;
    const inner = new MemoryRevocationList(10, () => now);
    const list: RevocationList = {
      revoke: (ids, ttlMs) => inner.revoke(ids, ttlMs),
      anyRevoked: async (ids) => (down ? Promise.reject(new AppError(Errors.unavailable, 'down')) : inner.anyRevoked(ids)),
    };
    const revocations = new TokenRevocations({ list, databases: noDatabases, lifetimeMs: 60_000, logger: quiet, now: () => now });
    await revocations.keyRevoked('key_1', 30_000);
    assert.equal(await revocations.isKeyRevoked('key_1'), true);
    assert.equal(await revocations.isKeyRevoked('key_2'), false);
    assert.equal(await revocations.isRevoked(claims('key_1', 'key_1')), false, 'keys and tokens do not share names');
    down = true;
    assert.equal(await revocations.isKeyRevoked('key_2'), undefined, 'the caller asks the database');
    down = false;
    now = 30_000;
    assert.equal(await revocations.isKeyRevoked('key_1'), false, 'past every key cache');
  });

  it('a revocation the list cannot take is refused here at once, and written once the list is back', async () => {
    const inner = new MemoryRevocationList();
    let down = true;
    const unavailable = () => new AppError(Errors.unavailable, 'down');
    const list: RevocationList = {
      revoke: async (ids, ttlMs) => (down ? Promise.reject(unavailable()) : inner.revoke(ids, ttlMs)),
      anyRevoked: async (ids) => inner.anyRevoked(ids),
    };
    const revocations = new TokenRevocations({ list, databases: noDatabases, lifetimeMs: 60_000, logger: quiet, retryMs: 5 });
    try {
      await revocations.userDeleted('usr_9');
      assert.equal(await revocations.isRevoked(claims('usr_9', 'ses_9')), true, 'this process refuses it meanwhile');
      assert.equal(await inner.anyRevoked(['user:usr_9']), false);
      down = false;
      for (let i = 0; i < 200 && !(await inner.anyRevoked(['user:usr_9'])); i++) await new Promise((resolve) => setTimeout(resolve, 5));
      assert.equal(await inner.anyRevoked(['user:usr_9']), true, 'written to the shared list');
    } finally {
      revocations.close();
    }
  });
});

describe('API key format', () => {
  it('makes keys of at least 160 random bits that parse back to their kind and environment', () => {
    const key = generateKey('account', 'live');
    assert.match(key, /^acc_[0-9A-Za-z]{38}_live$/);
    // 32 base62 characters of randomness: 32 * log2(62) ≈ 190 bits.
    assert.ok(32 * Math.log2(62) >= 160);
    assert.deepEqual(parseKey(key), { kind: 'account', environment: 'live' });
    assert.deepEqual(parseKey(generateKey('application', 'test')), { kind: 'application', environment: 'test' });
    assert.notEqual(generateKey('account', 'live'), key, 'random every time');
  });

  it('rejects every one-character typo by its checksum alone, and a changed kind or environment', () => {
    const key = generateKey('application', 'test');
    const body = key.slice(4, 42);
    for (let i = 0; i < body.length; i++) {
      const replaced = (body[i] as string) === 'a' ? 'b' : 'a';
      const typo = `app_${body.slice(0, i)}${replaced}${body.slice(i + 1)}_test`;
      assert.equal(parseKey(typo), null, `a typo at position ${i} passes the checksum`);
    }
    assert.equal(parseKey(key.replace(/_test$/, '_live')), null, 'the environment is covered');
    assert.equal(parseKey(key.replace(/^app_/, 'acc_')), null, 'the kind is covered');
    for (const bad of ['', 'app__test', `${key} `, key.slice(0, -1), `sk_${key.slice(4)}`]) assert.equal(parseKey(bad), null, JSON.stringify(bad));
  });
});
