import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadConfig } from './config.ts';

describe('loadConfig', () => {
  it('gives the defaults for an empty environment, resolving paths against the working directory', () => {
    const result = loadConfig({}, '/srv/bantu');
    assert.ok(result.ok);
    assert.equal(result.config.port, 8443);
    assert.equal(result.config.host, '127.0.0.1');
    assert.equal(result.config.dataDir, path.resolve('/srv/bantu', 'data'));
    assert.equal(result.config.backupDir, path.resolve('/srv/bantu', 'data', 'backups'));
    assert.equal(result.config.maxUploadBytes, 1024 ** 3);
    assert.equal(result.config.tls, undefined);
  });

  it('converts numbers and ignores empty strings and foreign variables', () => {
    const result = loadConfig({ BANTU_PORT: '9443', BANTU_HTTP_PORT: '', PATH: '/usr/bin' });
    assert.ok(result.ok);
    assert.equal(result.config.port, 9443);
    assert.equal(result.config.httpPort, undefined);
  });

  it('lists every problem at once: schema errors and checks across variables together', () => {
    const result = loadConfig({
      BANTU_PORT: 'eighty',
      BANTU_MAX_UPLOAD_BYTES: '-1',
      BANTU_TLS_CERT: '/etc/cert.pem',
      BANTU_CORS_ORIGINS: 'https://app.example.com, not an origin',
    });
    assert.ok(!result.ok);
    const variables = new Set(result.problems.map((problem) => problem.variable));
    assert.deepEqual([...variables].sort(), ['BANTU_CORS_ORIGINS', 'BANTU_MAX_UPLOAD_BYTES', 'BANTU_PORT', 'BANTU_TLS_KEY']);
    const cors = result.problems.find((problem) => problem.variable === 'BANTU_CORS_ORIGINS');
    assert.match(cors?.message ?? '', /not an origin/);
  });

  it('takes a certificate only with its key', () => {
    const result = loadConfig({ BANTU_TLS_CERT: 'cert.pem', BANTU_TLS_KEY: 'key.pem' }, '/srv/bantu');
    assert.ok(result.ok);
    assert.deepEqual(result.config.tls, { certFile: '/srv/bantu/cert.pem', keyFile: '/srv/bantu/key.pem' });
    const alone = loadConfig({ BANTU_TLS_KEY: 'key.pem' });
    assert.ok(!alone.ok);
    assert.deepEqual(alone.problems.map((problem) => problem.variable), ['BANTU_TLS_CERT']);
  });
});
