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

  describe('S3', () => {
    const keys = { S3_ACCESS_KEY_ID: 'AKIA123', S3_SECRET_ACCESS_KEY: 'secret' };

    it('leaves the stores on disk without S3_BUCKET or S3_BACKUP_BUCKET', () => {
      const result = loadConfig({ ...keys, S3_ENDPOINT: 'http://127.0.0.1:9000' });
      assert.ok(result.ok);
      assert.equal(result.config.s3Blobs, undefined);
      assert.equal(result.config.s3Backups, undefined);
    });

    it('defaults the region, path style with an endpoint, and the backups to the files endpoint', () => {
      const result = loadConfig({ ...keys, S3_ENDPOINT: 'http://127.0.0.1:9000', S3_BUCKET: 'acme-files', S3_BACKUP_BUCKET: 'acme-backups' });
      assert.ok(result.ok);
      const store = { endpoint: 'http://127.0.0.1:9000', region: 'us-east-1', forcePathStyle: true, accessKeyId: 'AKIA123', secretAccessKey: 'secret' };
      assert.deepEqual(result.config.s3Blobs, { ...store, bucketPrefix: 'acme-files' });
      assert.deepEqual(result.config.s3Backups, { ...store, bucketPrefix: 'acme-backups' });
    });

    it('on AWS (no endpoint) uses virtual-hosted requests; S3_BACKUP_ENDPOINT and S3_FORCE_PATH_STYLE override', () => {
      const aws = loadConfig({ ...keys, S3_REGION: 'eu-west-3', S3_BUCKET: 'acme', S3_BACKUP_BUCKET: 'acme-bk', S3_BACKUP_ENDPOINT: 'https://backup.example.com' });
      assert.ok(aws.ok);
      assert.deepEqual([aws.config.s3Blobs?.endpoint, aws.config.s3Blobs?.region, aws.config.s3Blobs?.forcePathStyle], [undefined, 'eu-west-3', false]);
      assert.deepEqual([aws.config.s3Backups?.endpoint, aws.config.s3Backups?.forcePathStyle], ['https://backup.example.com', true]);
      const hosted = loadConfig({ ...keys, S3_ENDPOINT: 'https://s3.example.com', S3_FORCE_PATH_STYLE: 'false', S3_BUCKET: 'acme' });
      assert.ok(hosted.ok);
      assert.equal(hosted.config.s3Blobs?.forcePathStyle, false);
    });

    it('names every S3 problem: keys, bucket names, a shared bucket, an endpoint for nothing, uploads too large to copy', () => {
      const problems = (env: Record<string, string>) => {
        const result = loadConfig(env);
        return result.ok ? [] : result.problems.map((problem) => problem.variable).sort();
      };
      assert.deepEqual(problems({ S3_BUCKET: 'acme' }), ['S3_ACCESS_KEY_ID']);
      assert.deepEqual(problems({ S3_BACKUP_BUCKET: 'acme', S3_ACCESS_KEY_ID: 'AKIA123' }), ['S3_SECRET_ACCESS_KEY']);
      assert.deepEqual(problems({ ...keys, S3_BUCKET: 'Acme_Files', S3_BACKUP_BUCKET: `a${'b'.repeat(58)}` }), ['S3_BACKUP_BUCKET', 'S3_BUCKET']);
      assert.deepEqual(problems({ ...keys, S3_BUCKET: 'acme', S3_BACKUP_BUCKET: 'acme' }), ['S3_BACKUP_BUCKET']);
      assert.deepEqual(problems({ ...keys, S3_BUCKET: 'acme', S3_BACKUP_BUCKET: 'acme', S3_BACKUP_ENDPOINT: 'https://other.example.com' }), []);
      assert.deepEqual(problems({ ...keys, S3_BUCKET: 'acme', S3_BACKUP_ENDPOINT: 'https://other.example.com' }), ['S3_BACKUP_ENDPOINT']);
      assert.deepEqual(problems({ ...keys, S3_BUCKET: 'acme', S3_FORCE_PATH_STYLE: 'yes' }), ['S3_FORCE_PATH_STYLE']);
      assert.deepEqual(problems({ ...keys, S3_BUCKET: 'acme', BANTU_MAX_UPLOAD_BYTES: String(6 * 1024 ** 3) }), ['BANTU_MAX_UPLOAD_BYTES']);
      assert.deepEqual(problems({ BANTU_MAX_UPLOAD_BYTES: String(6 * 1024 ** 3) }), [], 'on disk, any size');
    });
  });
});
