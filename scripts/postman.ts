/**
 * `npm run postman` (alias `npm run openapi`): regenerates docs/openapi.json and
 * docs/postman/bantu.postman_collection.json from the routes the gateway really serves.
 *
 * It starts a real Bantu in-process (temporary data dir, random port, silent logs; the
 * same helper the end-to-end tests use), reads /openapi.json from it, and stops it. Going
 * through the live server means the document is exactly what clients get, with every
 * service's routes registered as the composition root wires them.
 * test/openapi.test.ts fails when the committed files differ from what this produces.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../test/helpers/server.ts';
import { type OpenApiDocument, toPostmanCollection } from './postman-collection.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const OPENAPI_FILE = path.join(root, 'docs', 'openapi.json');
export const POSTMAN_FILE = path.join(root, 'docs', 'postman', 'bantu.postman_collection.json');

const serialise = (value: unknown) => `${JSON.stringify(value, null, 2)}\n`;

/** The OpenAPI document and Postman collection of the current routes, as file contents. */
export async function generateDocs(): Promise<{ openapi: string; postman: string }> {
  const server = await startServer({ BANTU_LOG_LEVEL: 'silent' });
  try {
    const response = await server.request('GET', '/openapi.json');
    if (response.status !== 200) throw new Error(`/openapi.json answered ${response.status}`);
    const doc = response.json as OpenApiDocument;
    return { openapi: serialise(doc), postman: serialise(toPostmanCollection(doc)) };
  } finally {
    await server.close();
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { openapi, postman } = await generateDocs();
  await fs.mkdir(path.dirname(POSTMAN_FILE), { recursive: true });
  await fs.writeFile(OPENAPI_FILE, openapi);
  await fs.writeFile(POSTMAN_FILE, postman);
  const doc = JSON.parse(openapi) as OpenApiDocument;
  const operations = Object.values(doc.paths).reduce((n, ops) => n + Object.keys(ops).length, 0);
  console.log(`wrote ${path.relative(root, OPENAPI_FILE)} and ${path.relative(root, POSTMAN_FILE)} (${operations} operations)`);
}
