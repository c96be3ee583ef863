import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { generate } from 'selfsigned';
import { Agent, request } from 'undici';
import { runCli } from './helpers/cli.ts';
import { makeTempDir } from './helpers/server.ts';

const isRoot = process.getuid?.() === 0;

describe('bantu CLI', () => {
  it('refuses a bad configuration with exit code 2, naming every bad variable', async () => {
    const cli = runCli(['start'], { BANTU_PORT: 'eighty', BANTU_MAX_UPLOAD_BYTES: '-1', BANTU_DATA_DIR: await makeTempDir() });
    const { code } = await cli.exited;
    assert.equal(code, 2);
    assert.match(cli.stderr(), /BANTU_PORT/);
    assert.match(cli.stderr(), /BANTU_MAX_UPLOAD_BYTES/);
    assert.doesNotMatch(cli.stderr(), /at .*\.ts:\d+/, 'no stack trace');
  });

  it('starts, prints the keys once, stops cleanly on SIGTERM, and a restart reuses everything', async () => {
    const dataDir = await makeTempDir();
    const env = { BANTU_DATA_DIR: dataDir, BANTU_PORT: '0' };
    const first = runCli(['start'], env);
    const url = await first.ready();
    assert.match(first.stdout(), /Operator token/);
    assert.match(first.stdout(), /acc_[0-9A-Za-z]{38}_live/);
    assert.match(first.stdout(), /app_[0-9A-Za-z]{38}_test/);
    assert.match(first.stdout(), /fingerprint.*([0-9A-F]{2}:){31}[0-9A-F]{2}/);
    assert.equal(fs.statSync(path.join(dataDir, 'secrets', 'default-tenant.json')).mode & 0o777, 0o600);
    assert.equal(fs.statSync(path.join(dataDir, 'secrets', 'operator-token')).mode & 0o777, 0o600);

    const ca = fs.readFileSync(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
    const agent = new Agent({ connect: { ca } });
    const health = await request(`${url}/healthz`, { dispatcher: agent });
    assert.equal(health.statusCode, 200);
    await health.body.text();
    await agent.close();

    first.child.kill('SIGTERM');
    const stopped = await first.exited;
    assert.equal(stopped.code, 0, `clean exit; stderr: ${first.stderr()}`);
    assert.ok(!fs.existsSync(path.join(dataDir, 'postgres', 'postmaster.pid')), 'the embedded PostgreSQL stopped with it');
    assert.ok(!fs.existsSync(path.join(dataDir, 'bantu.lock')), 'the data dir lock is released');

    const second = runCli(['start'], env);
    await second.ready();
    assert.doesNotMatch(second.stdout(), /Operator token|acc_/, 'secrets are printed on the first start only');
    assert.match(second.stdout(), /fingerprint:/);
    second.child.kill('SIGINT');
    assert.equal((await second.exited).code, 0);
  });

  it('finishes a request in flight when SIGTERM arrives, then exits 0', async () => {
    const dataDir = await makeTempDir();
    const cli = runCli(['start'], { BANTU_DATA_DIR: dataDir, BANTU_PORT: '0' });
    const url = new URL(await cli.ready());
    const ca = fs.readFileSync(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
    const operatorToken = fs.readFileSync(path.join(dataDir, 'secrets', 'operator-token'), 'utf8').trim();
    const body = JSON.stringify({ name: 'In flight' });
    const response = new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = https.request(
        { host: url.hostname, port: url.port, path: '/v1/tenants', method: 'POST', ca, headers: { authorization: `Bearer ${operatorToken}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
        (res) => {
          let text = '';
          res.on('data', (chunk) => (text += chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        },
      );
      req.on('error', reject);
      req.write(body.slice(0, 5));
      // The request is now in flight: headers and part of the body are sent.
      setTimeout(() => {
        cli.child.kill('SIGTERM');
        setTimeout(() => req.end(body.slice(5)), 500);
      }, 300);
    });
    const answer = await response;
    assert.equal(answer.status, 201, answer.text);
    assert.equal(JSON.parse(answer.text).name, 'In flight');
    assert.equal((await cli.exited).code, 0);
  });

  it('refuses a second Bantu on the same data dir at once, without harming the first', async () => {
    const dataDir = await makeTempDir();
    const first = runCli(['start'], { BANTU_DATA_DIR: dataDir, BANTU_PORT: '0' });
    const url = await first.ready();
    try {
      const second = runCli(['start'], { BANTU_DATA_DIR: dataDir, BANTU_PORT: '0' });
      const { code } = await second.exited;
      assert.equal(code, 1);
      assert.match(second.stderr(), /Another Bantu \(pid \d+\) is already running on the data dir/);
      const ca = fs.readFileSync(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
      const agent = new Agent({ connect: { ca } });
      const ready = await request(`${url}/readyz`, { dispatcher: agent });
      assert.equal(ready.statusCode, 200, 'the first one still answers');
      await ready.body.text();
      await agent.close();
    } finally {
      first.child.kill('SIGTERM');
      await first.exited;
    }
  });

  it('reads a .env in the working directory, and real environment variables win over it', async () => {
    const cwd = await makeTempDir();
    fs.writeFileSync(path.join(cwd, '.env'), 'BANTU_PORT=eighty\nBANTU_MAX_UPLOAD_BYTES=-5\n');
    const fromFile = runCli(['start'], {}, { cwd });
    assert.equal((await fromFile.exited).code, 2);
    assert.match(fromFile.stderr(), /BANTU_PORT/);
    assert.match(fromFile.stderr(), /BANTU_MAX_UPLOAD_BYTES/);

    const overridden = runCli(['start'], { BANTU_PORT: '8443' }, { cwd });
    assert.equal((await overridden.exited).code, 2);
    assert.match(overridden.stderr(), /BANTU_MAX_UPLOAD_BYTES/);
    assert.doesNotMatch(overridden.stderr(), /BANTU_PORT/, 'the real variable replaced the .env line');
  });

  it('exits at once on a second signal, without waiting for requests in flight, and stops its PostgreSQL', async () => {
    const dataDir = await makeTempDir();
    const cli = runCli(['start'], { BANTU_DATA_DIR: dataDir, BANTU_PORT: '0' });
    const url = new URL(await cli.ready());
    const ca = fs.readFileSync(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
    const pidFile = path.join(dataDir, 'postgres', 'postmaster.pid');
    const postgresPid = Number.parseInt(fs.readFileSync(pidFile, 'utf8').split('\n')[0] ?? '', 10);
    // A request whose body never ends: the first signal waits for it, the second does not.
    const hanging = https.request({ host: url.hostname, port: url.port, path: '/v1/tenants', method: 'POST', ca, headers: { 'content-type': 'application/json', 'content-length': 100 } });
    const requestEnded = new Promise<string>((resolve) => {
      hanging.on('error', (error) => resolve(`error ${(error as NodeJS.ErrnoException).code}`));
      hanging.on('response', (res) => resolve(`status ${res.statusCode}`));
    });
    hanging.write('{"na');
    await new Promise((resolve) => setTimeout(resolve, 300));
    cli.child.kill('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(cli.child.exitCode, null, 'the first signal waits for the request in flight');
    cli.child.kill('SIGTERM');
    const { code } = await cli.exited;
    assert.equal(code, 1, 'a forced exit is not a clean one');
    assert.match(await requestEnded, /^error/, 'the unfinished request was cut, not answered');
    let alive = true;
    for (let waited = 0; alive && waited < 10_000; waited += 100) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      try {
        process.kill(postgresPid, 0);
      } catch {
        alive = false;
      }
    }
    assert.equal(alive, false, 'the embedded PostgreSQL does not outlive Bantu');
  });

  it('starts over a stale postmaster.pid whose pid now belongs to an unrelated process, and leaves that process alone', async () => {
    const dataDir = await makeTempDir();
    const env = { BANTU_DATA_DIR: dataDir, BANTU_PORT: '0' };
    const first = runCli(['start'], env);
    await first.ready();
    first.child.kill('SIGTERM');
    assert.equal((await first.exited).code, 0);

    // After a crash and a reboot, the pid in the file may be any process's.
    const bystander = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      fs.writeFileSync(path.join(dataDir, 'postgres', 'postmaster.pid'), `${bystander.pid}\n${path.join(dataDir, 'postgres')}\n`);
      const second = runCli(['start'], env);
      await second.ready();
      assert.equal(bystander.exitCode, null, 'the unrelated process was not signalled');
      assert.equal(bystander.signalCode, null);
      second.child.kill('SIGTERM');
      assert.equal((await second.exited).code, 0);
    } finally {
      bystander.kill('SIGKILL');
    }
  });

  it('serves a configured certificate (BANTU_TLS_CERT/KEY), and refuses an unusable one plainly before starting anything', async () => {
    const folder = await makeTempDir();
    const pems = await generate([{ name: 'commonName', value: 'Company CA-issued' }], {
      keySize: 2048,
      algorithm: 'sha256',
      extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
    });
    const certFile = path.join(folder, 'company.crt');
    const keyFile = path.join(folder, 'company.key');
    fs.writeFileSync(certFile, pems.cert);
    fs.writeFileSync(keyFile, pems.private, { mode: 0o600 });

    const dataDir = await makeTempDir();
    const cli = runCli(['start'], { BANTU_DATA_DIR: dataDir, BANTU_PORT: '0', BANTU_TLS_CERT: certFile, BANTU_TLS_KEY: keyFile });
    try {
      const url = await cli.ready();
      const fingerprint = new X509Certificate(pems.cert).fingerprint256;
      assert.ok(cli.stdout().includes(`fingerprint: ${fingerprint}`), 'the banner shows the configured certificate\'s fingerprint');
      assert.doesNotMatch(cli.stdout(), /new, self-signed/);
      assert.ok(!fs.existsSync(path.join(dataDir, 'tls', 'cert.pem')), 'no self-signed certificate was made');
      const agent = new Agent({ connect: { ca: pems.cert } });
      const health = await request(`${url}/healthz`, { dispatcher: agent });
      assert.equal(health.statusCode, 200, 'a client trusting only the configured certificate connects');
      await health.body.text();
      await agent.close();
    } finally {
      cli.child.kill('SIGTERM');
      await cli.exited;
    }

    const otherKey = path.join(folder, 'other.key');
    fs.writeFileSync(otherKey, (await generate([{ name: 'commonName', value: 'other' }], { keySize: 2048 })).private);
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ BANTU_TLS_CERT: path.join(folder, 'missing.crt'), BANTU_TLS_KEY: keyFile }, /BANTU_TLS_CERT .*missing\.crt cannot be read \(ENOENT\)/],
      [{ BANTU_TLS_CERT: keyFile, BANTU_TLS_KEY: keyFile }, /BANTU_TLS_CERT .* is not a PEM certificate/],
      [{ BANTU_TLS_CERT: certFile, BANTU_TLS_KEY: otherKey }, /BANTU_TLS_KEY .*other\.key is not the private key of BANTU_TLS_CERT/],
    ];
    for (const [tls, message] of cases) {
      const dir = await makeTempDir();
      const bad = runCli(['start'], { BANTU_DATA_DIR: dir, BANTU_PORT: '0', ...tls });
      assert.equal((await bad.exited).code, 1);
      assert.match(bad.stderr(), message);
      assert.doesNotMatch(bad.stderr(), /\n\s+at /, 'no stack trace');
      assert.ok(!fs.existsSync(path.join(dir, 'postgres')), 'nothing was started');
    }
  });

  it('refuses an unreachable REDIS_URL plainly before starting anything, without showing its password', async () => {
    const dir = await makeTempDir();
    const bad = runCli(['start'], { BANTU_DATA_DIR: dir, BANTU_PORT: '0', REDIS_URL: 'redis://:s3cret@127.0.0.1:1' });
    assert.equal((await bad.exited).code, 1);
    assert.match(bad.stderr(), /Bantu cannot start: REDIS_URL: cannot reach Redis at redis:\/\/\*\*\*@127\.0\.0\.1:1 \(connect ECONNREFUSED/);
    assert.doesNotMatch(bad.stderr() + bad.stdout(), /s3cret/);
    assert.doesNotMatch(bad.stderr(), /\n\s+at /, 'no stack trace');
    assert.ok(!fs.existsSync(path.join(dir, 'postgres')), 'nothing was started');
  });

  // PostgreSQL refuses to run as root, so as root the embedded server runs as "postgres".
  // CI runs as root, so this runs there; as a normal user there is nothing to check.
  it('as root, explains plainly when the postgres user cannot reach the data dir', { skip: isRoot ? false : 'only meaningful as root' }, async () => {
    const locked = fs.mkdtempSync(path.join(os.tmpdir(), 'bantu-locked-'));
    fs.chmodSync(locked, 0o700);
    const cli = runCli(['start'], { BANTU_DATA_DIR: path.join(locked, 'data'), BANTU_PORT: '0' });
    const { code } = await cli.exited;
    assert.equal(code, 1);
    assert.match(cli.stderr(), /cannot enter .*bantu-locked-/);
    assert.match(cli.stderr(), /BANTU_DATA_DIR/);
    assert.doesNotMatch(cli.stderr(), /\n\s+at /, 'no stack trace');
    fs.rmSync(locked, { recursive: true, force: true });
  });
});
