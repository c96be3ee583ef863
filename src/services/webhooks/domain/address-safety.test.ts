import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { judgeAddress, judgeUrl, NO_ALLOWED_NETWORKS, parseNetworks } from './address-safety.ts';

describe('webhook address safety', () => {
  it('denies loopback, private, CGNAT, link-local, metadata, unique-local, multicast and reserved addresses; admits public ones', () => {
    const denied = [
      '127.0.0.1', '127.255.0.9', '10.0.0.1', '172.16.5.4', '172.31.255.255', '192.168.0.1', '100.64.0.1', '100.100.100.200',
      '169.254.169.254', '0.0.0.0', '224.0.0.251', '239.1.1.1', '240.0.0.1', '255.255.255.255',
      '::', '::1', '::ffff:127.0.0.1', '::ffff:10.0.0.1', '::127.0.0.1', '64:ff9b::a00:1', 'fc00::1', 'fd00:ec2::254', 'fe80::1', 'ff02::1',
      'not-an-address',
    ];
    for (const address of denied) assert.equal(judgeAddress(address, NO_ALLOWED_NETWORKS), 'denied', address);
    for (const address of ['93.184.216.34', '8.8.8.8', '172.32.0.1', '2606:4700:4700::1111', '::ffff:8.8.8.8']) {
      assert.equal(judgeAddress(address, NO_ALLOWED_NETWORKS), 'public', address);
    }
  });

  it('an allowed network admits its addresses, plain http included, and only those', () => {
    const allowed = parseNetworks('127.0.0.0/8, 10.1.0.0/16, ::1');
    assert.deepEqual(allowed.cidrs, ['127.0.0.0/8', '10.1.0.0/16', '::1']);
    assert.equal(judgeAddress('127.0.0.1', allowed), 'allowed');
    assert.equal(judgeAddress('::ffff:127.0.0.1', allowed), 'allowed');
    assert.equal(judgeAddress('::1', allowed), 'allowed');
    assert.equal(judgeAddress('10.2.0.1', allowed), 'denied');
    assert.equal(judgeUrl(new URL('http://127.0.0.1/x'), ['127.0.0.1'], allowed), null);
    assert.equal(judgeUrl(new URL('http://8.8.8.8/x'), ['8.8.8.8'], allowed), 'it must use https');
    assert.equal(judgeUrl(new URL('https://8.8.8.8/x'), ['8.8.8.8'], allowed), null);
    // One bad address among several refuses the whole name.
    assert.match(String(judgeUrl(new URL('https://a.example/x'), ['8.8.8.8', '10.2.0.1'], allowed)), /non-public/);
    assert.match(String(judgeUrl(new URL('https://a.example/x'), [], allowed)), /does not resolve/);
    for (const bad of ['127.0.0.0/33', 'nope', '::/129', '1.2.3.4/x']) assert.throws(() => parseNetworks(bad), bad);
  });
});
