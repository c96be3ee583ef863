import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { generateDocs, OPENAPI_FILE, POSTMAN_FILE } from '../scripts/postman.ts';
import { exampleOf, firstDifference, resourceIdVariable, toPostmanCollection } from '../scripts/postman-collection.ts';
import { README_FILE, withCurrentTable } from '../scripts/readme-config.ts';
import { configTable } from '../src/core/config.ts';

const FIX = 'run `npm run postman` and commit docs/openapi.json and docs/postman/';

describe('committed API documents', () => {
  it('docs/openapi.json and the Postman collection match what the current routes generate', async () => {
    const fresh = await generateDocs();
    for (const [file, current] of [
      [OPENAPI_FILE, fresh.openapi],
      [POSTMAN_FILE, fresh.postman],
    ] as const) {
      const committed = await fs.readFile(file, 'utf8').catch(() => undefined);
      const name = path.relative(path.resolve(OPENAPI_FILE, '..', '..'), file);
      assert.ok(committed !== undefined, `${name} is missing: ${FIX}`);
      if (committed !== current) {
        const where = firstDifference(JSON.parse(committed), JSON.parse(current)) ?? 'formatting only';
        assert.fail(`${name} differs from the current routes (first difference at ${where}): ${FIX}`);
      }
    }
  });
});

describe('README', () => {
  it('has the current configuration table, with every variable of the config schema', async () => {
    const readme = await fs.readFile(README_FILE, 'utf8');
    for (const { variable } of configTable()) assert.ok(readme.includes(`\`${variable}\``), `README.md does not mention ${variable}: run \`npm run readme:config -- --write\``);
    assert.ok(readme === withCurrentTable(readme), 'README.md configuration table is out of date: run `npm run readme:config -- --write`');
  });
});

describe('Postman collection generator', () => {
  const doc = {
    openapi: '3.1.0',
    info: { title: 'T', version: '1' },
    paths: {
      '/healthz': { get: { tags: ['operations'], summary: 'Liveness' } },
      '/v1/tenants': { post: { tags: ['tenants'], security: [{ bearer: [] }], requestBody: { content: { 'application/json': { schema: { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1 } } } } } } } },
      '/v1/keys/{id}': { delete: { tags: ['keys'], security: [{ basicKey: [] }], parameters: [{ name: 'id', in: 'path' as const, required: true }] } },
      '/v1/auth/login': {
        post: {
          tags: ['auth'],
          security: [{ basicKey: [] }],
          responses: { '200': { content: { 'application/json': { schema: { type: 'object', properties: { access_token: { type: 'string' }, refresh_token: { type: 'string' } } } } } } },
        },
      },
      '/v1/files': { get: { tags: ['files'], security: [{ bearer: [] }], parameters: [{ name: 'cursor', in: 'query' as const, required: false, schema: { type: 'string' } }] } },
    },
  };
  // biome-ignore lint/suspicious/noExplicitAny: reading a generated JSON tree
  const collection = toPostmanCollection(doc) as any;
  // biome-ignore lint/suspicious/noExplicitAny: reading a generated JSON tree
  const request = (folder: string) => collection.item.find((f: any) => f.name === folder).item[0];

  it('makes one folder per tag and the collection variables', () => {
    assert.deepEqual(collection.item.map((f: { name: string }) => f.name), ['operations', 'tenants', 'keys', 'auth', 'files']);
    assert.deepEqual(
      collection.variable.map((v: { key: string }) => v.key),
      ['baseUrl', 'accountKey', 'applicationKey', 'accessToken', 'refreshToken', 'operatorToken', 'keyId'],
    );
    assert.equal(collection.variable[0].value, 'https://127.0.0.1:8443');
  });

  it('picks the credential per route: none, operator Bearer, key as Basic user name, user Bearer', () => {
    assert.equal(request('operations').request.auth.type, 'noauth');
    assert.deepEqual(request('tenants').request.auth, { type: 'bearer', bearer: [{ key: 'token', value: '{{operatorToken}}', type: 'string' }] });
    assert.equal(request('keys').request.auth.type, 'basic');
    assert.equal(request('keys').request.auth.basic[0].value, '{{accountKey}}');
    assert.equal(request('keys').request.auth.basic[1].value, '');
    assert.equal(request('auth').request.auth.basic[0].value, '{{applicationKey}}');
    assert.equal(request('files').request.auth.bearer[0].value, '{{accessToken}}');
  });

  it('writes path variables, optional query parameters unticked, JSON example bodies and token capture', () => {
    assert.deepEqual(request('keys').request.url.path, ['v1', 'keys', ':id']);
    assert.equal(request('keys').request.url.variable[0].key, 'id');
    assert.equal(request('files').request.url.query[0].disabled, true);
    assert.deepEqual(JSON.parse(request('tenants').request.body.raw), { name: 'Example' });
    assert.match(request('auth').event[0].script.exec.join('\n'), /collectionVariables\.set\('accessToken'/);
  });

  it('builds examples that satisfy simple constraints', () => {
    assert.deepEqual(
      exampleOf(
        {
          type: 'object',
          required: ['email', 'password', 'limit', 'kind'],
          properties: {
            email: { type: 'string', format: 'email' },
            password: { type: 'string', minLength: 40 },
            limit: { type: 'integer', minimum: 1, maximum: 200 },
            kind: { anyOf: [{ const: 'account' }, { const: 'application' }] },
            role: { type: 'string' },
          },
        },
        doc,
      ),
      { email: 'ada@example.com', password: 'correct horse battery staplexxxxxxxxxxxx', limit: 1, kind: 'account' },
      'required fields only',
    );
    // A body of optional fields only (a PATCH) shows its first field, so it is valid as it stands.
    assert.deepEqual(exampleOf({ type: 'object', properties: { name: { type: 'string' }, email: { type: 'string' }, password: { type: 'string' } } }, doc), { name: 'Example' });
  });

  it('keeps the id of a created resource for the routes of one item', () => {
    assert.equal(resourceIdVariable('/v1/files/{id}/content'), 'fileId');
    assert.equal(resourceIdVariable('/v1/users'), 'userId');
    assert.equal(resourceIdVariable('/v1/keys/{id}'), 'keyId');
    assert.equal(request('keys').request.url.variable[0].value, '{{keyId}}');
  });
});
