import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { AppError, Errors } from '../core/errors.ts';
import { route } from './routes.ts';
import { createGateway } from './server.ts';

// The gateway's error rendering on its own (Fastify inject, no network): registered errors
// become their problem+json; anything else a bare 500 whose cause reaches the log only.
describe('problem+json rendering', () => {
  async function gatewayWith(logLines: string[]) {
    const sink = new Writable({
      write(chunk, _encoding, done) {
        logLines.push(String(chunk));
        done();
      },
    });
    return createGateway({
      logger: pino({ level: 'error' }, sink),
      corsOrigins: [],
      maxUploadBytes: 1024,
      metrics: new Registry(),
      checks: new Map(),
      verifiers: [],
      version: 'test',
      routes: [
        route({
          method: 'GET',
          url: '/boom',
          schema: {},
          handler: async () => {
            throw new Error('connect ECONNREFUSED 10.0.0.7:5432 password=hunter2');
          },
        }),
        route({
          method: 'GET',
          url: '/busy',
          schema: {},
          handler: async () => {
            throw Object.assign(new Error('sorry, too many clients already'), { code: '53300', severity: 'FATAL' });
          },
        }),
        route({
          method: 'GET',
          url: '/exists',
          schema: {},
          handler: async () => {
            throw new AppError(Errors.fileExists, 'report.pdf already exists', { headers: { 'x-extra': 'yes' } });
          },
        }),
      ],
    });
  }

  it('turns an unexpected error into a bare 500 and logs the cause', async () => {
    const log: string[] = [];
    const app = await gatewayWith(log);
    const response = await app.inject({ method: 'GET', url: '/v1/boom', headers: { 'x-request-id': 'r-500' } });
    assert.equal(response.statusCode, 500);
    assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
    const body = response.json();
    assert.equal(body.code, 'internal_error');
    assert.equal(body.request_id, 'r-500');
    assert.ok(!response.body.includes('ECONNREFUSED') && !response.body.includes('hunter2') && !response.body.includes('at '), 'nothing internal is sent');
    assert.ok(log.some((line) => line.includes('ECONNREFUSED')), 'the cause is logged');
    await app.close();
  });

  it('answers 503 with Retry-After when the database refuses connections (too many clients), and logs the cause', async () => {
    const log: string[] = [];
    const app = await gatewayWith(log);
    const response = await app.inject({ method: 'GET', url: '/v1/busy' });
    assert.equal(response.statusCode, 503);
    assert.equal(response.headers['retry-after'], '1');
    assert.equal(response.json().code, 'service_unavailable');
    assert.ok(!response.body.includes('too many clients'), 'nothing internal is sent');
    assert.ok(log.some((line) => line.includes('too many clients')), 'the cause is logged');
    await app.close();
  });

  it('renders a registered error with its status, code, detail and headers', async () => {
    const app = await gatewayWith([]);
    const response = await app.inject({ method: 'GET', url: '/v1/exists' });
    assert.equal(response.statusCode, 409);
    assert.equal(response.headers['x-extra'], 'yes');
    assert.deepEqual(
      { ...(response.json() as Record<string, unknown>), request_id: 'x' },
      { type: 'urn:bantu:problem:file_exists', title: 'A file with this name already exists here', status: 409, detail: 'report.pdf already exists', code: 'file_exists', request_id: 'x' },
    );
    await app.close();
  });
});
