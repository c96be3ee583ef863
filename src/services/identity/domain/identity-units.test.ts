import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryCounterStore } from '../../../adapters/cache/memory.ts';
import { AppError } from '../../../core/errors.ts';
import { generateKey, parseKey } from './api-keys.ts';
import { LoginThrottle } from './login-throttle.ts';
import { UserRevocations } from './revocations.ts';
import { SecretBox } from './secret-box.ts';

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

describe('UserRevocations', () => {
  it('refuses a revoked user for one token lifetime', () => {
    let now = 0;
    const revocations = new UserRevocations(1000, () => now);
    revocations.revoke('usr_1');
    assert.equal(revocations.isRevoked('usr_1'), true);
    assert.equal(revocations.isRevoked('usr_2'), false);
    now = 1000;
    assert.equal(revocations.isRevoked('usr_1'), false);
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
