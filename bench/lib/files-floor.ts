import { createHash, createPublicKey, type KeyObject, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import multipart from '@fastify/multipart';
import type { Static } from '@sinclair/typebox';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import { decodeProtectedHeader, type JWK, jwtVerify } from 'jose';
import type pg from 'pg';
import { newId } from '../../src/core/ids.ts';
import { pageOf } from '../../src/core/pagination.ts';
import { toFileObject } from '../../src/services/files/domain/files.service.ts';
import { FileObject, FilePage, FileParams, ListFilesQuery, UploadQuery } from '../../src/services/files/http/files.schemas.ts';
import type { FileRow } from '../../src/services/files/repo/files.repo.ts';
import { AUDIENCE, TOKEN_TYPE } from '../../src/services/identity/domain/tokens.service.ts';

/**
 * The floor of files' hot paths (bench/files-hot.bench.ts): a bare Fastify HTTPS server
 * doing the part of each request that no implementation can skip, and nothing else.
 *
 * - Every route verifies the caller's user JWT with jose's jwtVerify, against the Ed25519
 *   keys Bantu publishes (its JWKS), with the options Bantu's TokenService uses. Like Bantu,
 *   it remembers a verified token until it expires (Bantu does, so re-verifying the same
 *   token on every request would be work Bantu does not do); `verifyEveryRequest` turns
 *   that off, to show what the signature check costs.
 * - GET /v1/files/:id and GET /v1/files run ONE query each on Bantu's own database: the
 *   select Bantu's repository runs (files.repo.ts, findFile / listFiles), same text shape,
 *   same parameters, as a plain statement (no transaction, no tenant binding), and answer
 *   the same JSON through the same response schemas.
 * - POST /v1/files parses the same multipart with @fastify/multipart, streams the `file` part
 *   to a temp file (hashing it: the answer carries its sha256) with fsync, renames it, fsyncs
 *   the folder, and inserts one row into a table of its own (bench_floor.files, same
 *   database), one statement, one transaction.
 */
export interface FloorOptions {
  tls: { cert: string; key: string };
  /** Connections to Bantu's `test` environment database. */
  pool: pg.Pool;
  jwks: { keys: JWK[] };
  /** The `iss` Bantu's tokens carry (its public URL). */
  issuer: string;
  /** Where creates write (on the same file system as Bantu's blobs). */
  dir: string;
  verifyEveryRequest?: boolean;
}

interface Claims {
  userId: string;
  tenantId: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    claims: Claims | null;
  }
}

// The columns and WHERE clauses of files.repo.ts, for a user who is not an admin (the owner filter on).
const COLUMNS = 'id, tenant_id, user_id, name, path, size, content_type, sha256, version, created_at, updated_at';
const FIND_FILE = `
    select ${COLUMNS} from files.file
    where tenant_id = $1 and id = $2 and deleted_at is null and user_id = $3`;
const LIST_FILES = `
    select ${COLUMNS} from files.file
    where tenant_id = $1 and deleted_at is null and user_id = $2
      and path = $3
      and true
    order by id desc limit $4`;
const INSERT_FILE = `
    insert into bench_floor.files (id, tenant_id, user_id, name, path, size, content_type, sha256, version)
    values ($1, $2, $3, $4, $5, $6, $7, $8, 1)
    returning ${COLUMNS}`;

/** The floor's own table: the File object's columns, a primary key and the one-live-name-per-folder rule. */
export async function createFloorTable(pool: pg.Pool): Promise<void> {
  await pool.query(`
    create schema if not exists bench_floor;
    create table if not exists bench_floor.files (
      id text primary key, tenant_id text not null, user_id text, name text not null, path text not null,
      size bigint not null, content_type text not null, sha256 text not null, version int not null,
      created_at timestamptz not null default now(), updated_at timestamptz not null default now());
    create unique index if not exists files_name_unique on bench_floor.files (tenant_id, coalesce(user_id, ''), path, name);`);
}

function tokenVerifier(options: FloorOptions): (authorization: string | undefined) => Promise<Claims | null> {
  const keys = new Map<string, KeyObject>();
  for (const jwk of options.jwks.keys) if (jwk.kid) keys.set(jwk.kid, createPublicKey({ key: jwk as never, format: 'jwk' }));
  const verified = new Map<string, { claims: Claims; expiresAtMs: number }>();
  return async (authorization) => {
    const token = authorization?.startsWith('Bearer ') ? authorization.slice(7) : undefined;
    if (!token) return null;
    const known = options.verifyEveryRequest ? undefined : verified.get(token);
    if (known && known.expiresAtMs > Date.now()) return known.claims;
    try {
      const kid = decodeProtectedHeader(token).kid;
      const key = kid === undefined ? undefined : keys.get(kid);
      if (!key) return null;
      const { payload } = await jwtVerify(token, key, {
        algorithms: ['EdDSA'],
        issuer: options.issuer,
        audience: AUDIENCE,
        typ: TOKEN_TYPE,
        requiredClaims: ['exp', 'iat', 'sub'],
        clockTolerance: 60,
      });
      if (typeof payload.sub !== 'string' || typeof payload.tid !== 'string' || typeof payload.exp !== 'number') return null;
      const claims = { userId: payload.sub, tenantId: payload.tid };
      verified.set(token, { claims, expiresAtMs: payload.exp * 1000 });
      return claims;
    } catch {
      return null;
    }
  };
}

const claimsOf = (request: FastifyRequest): Claims => request.claims as Claims;

/** fsync of a folder, so that a rename into it is durable (Bantu's blob store does the same). */
export async function fsyncFolder(folder: string): Promise<void> {
  const handle = await fs.open(folder, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes the part to a temp file (fsync on close), renames it into `files/`, fsyncs that folder. */
async function storePart(dir: string, source: AsyncIterable<Uint8Array>): Promise<{ sha256: string; size: number }> {
  const temp = path.join(dir, 'tmp', randomBytes(12).toString('hex'));
  const hash = createHash('sha256');
  let size = 0;
  await pipeline(
    source,
    async function* measure(chunks: AsyncIterable<Uint8Array>) {
      for await (const chunk of chunks) {
        size += chunk.byteLength;
        hash.update(chunk);
        yield chunk;
      }
    },
    createWriteStream(temp, { flags: 'wx', flush: true }),
  );
  const sha256 = hash.digest('hex');
  const target = path.join(dir, 'files', path.basename(temp));
  await fs.rename(temp, target);
  await fsyncFolder(path.dirname(target));
  return { sha256, size };
}

export async function startFilesFloor(options: FloorOptions): Promise<{ app: FastifyInstance; origin: string }> {
  await Promise.all([fs.mkdir(path.join(options.dir, 'tmp'), { recursive: true }), fs.mkdir(path.join(options.dir, 'files'), { recursive: true })]);
  const verify = tokenVerifier(options);
  const app = Fastify({ https: options.tls }) as unknown as FastifyInstance;
  app.decorateRequest('claims', null);
  app.addHook('preHandler', async (request, reply) => {
    request.claims = await verify(request.headers.authorization);
    if (!request.claims) return reply.code(401).send({ code: 'unauthorized' });
  });
  await app.register(multipart, { throwFileSizeLimit: false });

  app.get<{ Params: Static<typeof FileParams> }>('/v1/files/:id', { schema: { params: FileParams, response: { 200: FileObject } } }, async (request, reply) => {
    const { userId, tenantId } = claimsOf(request);
    const { rows } = await options.pool.query<FileRow>(FIND_FILE, [tenantId, request.params.id, userId]);
    if (!rows[0]) return reply.code(404).send({ code: 'not_found' });
    return toFileObject(rows[0]);
  });

  app.get<{ Querystring: Static<typeof ListFilesQuery> }>('/v1/files', { schema: { querystring: ListFilesQuery, response: { 200: FilePage } } }, async (request) => {
    const { userId, tenantId } = claimsOf(request);
    const { limit, path: folder = '/' } = request.query;
    const { rows } = await options.pool.query<FileRow>(LIST_FILES, [tenantId, userId, folder, limit + 1]);
    return pageOf(rows, limit, toFileObject);
  });

  app.post<{ Querystring: Static<typeof UploadQuery> }>('/v1/files', { schema: { querystring: UploadQuery, response: { 201: FileObject } } }, async (request, reply) => {
    const { userId, tenantId } = claimsOf(request);
    let stored: { sha256: string; size: number; contentType: string; filename: string } | undefined;
    for await (const part of request.parts({ limits: { fileSize: Number.MAX_SAFE_INTEGER } })) {
      if (part.type !== 'file' || part.fieldname !== 'file' || stored) return reply.code(422).send({ code: 'validation_failed' });
      stored = { ...(await storePart(options.dir, part.file)), contentType: part.mimetype, filename: part.filename };
    }
    if (!stored) return reply.code(422).send({ code: 'validation_failed' });
    const { rows } = await options.pool.query<FileRow>(INSERT_FILE, [
      newId('file'),
      tenantId,
      userId,
      request.query.name ?? stored.filename,
      request.query.path ?? '/',
      stored.size,
      stored.contentType,
      stored.sha256,
    ]);
    return reply.code(201).send(toFileObject(rows[0] as FileRow));
  });

  await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, origin: `https://127.0.0.1:${(app.server.address() as AddressInfo).port}` };
}
