import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { beforeEach, describe, it } from 'node:test';
import { rejectsWith } from '../../../../test/helpers/app-error.ts';
import { AppError, Errors } from '../../../core/errors.ts';
import type { StagedBlob, StoredBlob } from '../../../core/ports.ts';
import type { TenantPrincipal } from '../../../core/principal.ts';
import { type Idempotency, principalKey, type RecordedAnswer, type WriteAnswer } from './idempotency.ts';
import { type CreateTarget, type CreateUpload, FileUploads, FRAMING_SLACK, PRECHECK_FROM_BYTES, type ReplaceUpload, type UploadForm, type UploadLimit, type UploadSteps } from './uploads.ts';

// The upload workflow on its own, against an in-memory files service: what is refused before
// a byte is read or stored, what a retry under an Idempotency-Key gets, and that staged
// content is committed exactly once or discarded.

const principal: TenantPrincipal = { kind: 'account_key', keyId: 'key_1', tenantId: 'ten_1', environment: 'test' };
const MAX = 1000;

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

/** Content that records whether anyone started reading it, and how often its body was read. */
function content(text: string) {
  const source = {
    started: false,
    reads: 0,
    async *[Symbol.asyncIterator]() {
      source.started = true;
      yield Buffer.from(text);
    },
  };
  return source;
}

async function drain(source: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of source) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

/** The files service, in memory: every call the workflow makes is logged in `calls`. */
class FakeFiles implements UploadSteps {
  calls: string[] = [];
  taken = new Set<string>();
  answers = new Map<string, RecordedAnswer>();
  blobs = new Map<string, Buffer>();
  staged: { sha256: string; committed: number; discarded: number }[] = [];
  files = new Map<string, { name: string; sha256: string; version: number }>();
  /** Makes the next create fail, after its content was committed. */
  failCreate: AppError | undefined;

  async checkDeclaredSize(_principal: TenantPrincipal, declared: number | undefined, slack: number): Promise<UploadLimit> {
    this.calls.push('checkDeclaredSize');
    if (declared !== undefined && declared > MAX + slack) throw new AppError(Errors.payloadTooLarge, `Uploads are limited to ${MAX} bytes; nothing was kept`);
    return { maxBytes: MAX, byQuota: false };
  }

  async recordedAnswer(who: TenantPrincipal, key: string): Promise<RecordedAnswer | null> {
    this.calls.push('recordedAnswer');
    return this.answers.get(`${principalKey(who)} ${key}`) ?? null;
  }

  resolveOwner(_principal: TenantPrincipal, ownerId: string | undefined): string | null {
    return ownerId ?? null;
  }

  async precheckCreate(_principal: TenantPrincipal, target: CreateTarget): Promise<void> {
    this.calls.push('precheckCreate');
    if (this.taken.has(`${target.path} ${target.name}`)) throw new AppError(Errors.fileExists, `/${target.name} already exists`);
  }

  async precheckReplace(_principal: TenantPrincipal, id: string, _ifMatch: string | undefined): Promise<void> {
    this.calls.push('precheckReplace');
    if (!this.files.has(id)) throw new AppError(Errors.notFound, `No file ${id}`);
  }

  async stageContent(_principal: TenantPrincipal, source: AsyncIterable<Uint8Array>, limit: UploadLimit): Promise<StagedBlob> {
    this.calls.push('stageContent');
    const bytes = await drain(source);
    if (bytes.length > limit.maxBytes) throw new AppError(Errors.payloadTooLarge, 'too large');
    const entry = { sha256: sha256(bytes), committed: 0, discarded: 0 };
    this.staged.push(entry);
    return {
      key: entry.sha256,
      sha256: entry.sha256,
      size: bytes.length,
      commit: async () => {
        entry.committed++;
        this.blobs.set(entry.sha256, bytes);
        return { key: entry.sha256, sha256: entry.sha256, size: bytes.length };
      },
      discard: async () => {
        entry.discarded++;
      },
    };
  }

  async hashContent(source: AsyncIterable<Uint8Array>): Promise<{ sha256: string; size: number }> {
    this.calls.push('hashContent');
    const bytes = await drain(source);
    return { sha256: sha256(bytes), size: bytes.length };
  }

  private record(idempotency: Idempotency | undefined, answer: WriteAnswer): WriteAnswer {
    if (idempotency) this.answers.set(`${principalKey(principal)} ${idempotency.key}`, { fingerprint: idempotency.fingerprint, status: answer.status, response: answer.file });
    return answer;
  }

  async create(_principal: TenantPrincipal, input: CreateTarget & { contentType?: string; blob: StoredBlob; idempotency?: Idempotency }): Promise<WriteAnswer> {
    this.calls.push('create');
    assert.ok(this.blobs.has(input.blob.sha256), 'create gets a committed blob');
    if (this.failCreate) throw this.failCreate;
    const id = `file_${this.files.size + 1}`;
    this.files.set(id, { name: input.name, sha256: input.blob.sha256, version: 1 });
    this.taken.add(`${input.path} ${input.name}`);
    return this.record(input.idempotency, { status: 201, file: fileObject(id, input.name, input.blob, 1), replayed: false });
  }

  async replace(_principal: TenantPrincipal, id: string, input: { contentType?: string; blob: StoredBlob; idempotency?: Idempotency }): Promise<WriteAnswer> {
    this.calls.push('replace');
    assert.ok(this.blobs.has(input.blob.sha256), 'replace gets a committed blob');
    const file = this.files.get(id);
    if (!file) throw new AppError(Errors.notFound, `No file ${id}`);
    const next = { ...file, sha256: input.blob.sha256, version: file.version + 1 };
    this.files.set(id, next);
    return this.record(input.idempotency, { status: 200, file: fileObject(id, next.name, input.blob, next.version), replayed: false });
  }
}

function fileObject(id: string, name: string, blob: StoredBlob, version: number) {
  const at = '2026-01-01T00:00:00.000Z';
  return { id, name, path: '/', size: blob.size, content_type: 'text/plain', sha256: blob.sha256, version, owner_id: null, created_at: at, updated_at: at };
}

interface Body {
  text?: string;
  /** Form fields before the content (multipart), and the part's filename. */
  before?: UploadForm;
  /** Form fields after it. */
  after?: Record<string, string>;
  /** The body fails after its content was read (cut short after the file part). */
  failAfter?: AppError;
  framed?: boolean;
  declaredBytes?: number;
  idempotencyKey?: string;
}

/** An upload as the HTTP layer would hand it over; its `source` tells whether (and how often) it was read. */
function uploadOf(body: Body) {
  const source = content(body.text ?? 'hello');
  return {
    source,
    declaredBytes: body.declaredBytes,
    framed: body.framed ?? false,
    idempotencyKey: body.idempotencyKey,
    async read(consume: (content: AsyncIterable<Uint8Array>, before: UploadForm) => Promise<void>) {
      source.reads++;
      const before = body.before ?? { fields: {} };
      await consume(source, before);
      if (body.failAfter) throw body.failAfter;
      return { fields: { ...before.fields, ...body.after }, filename: before.filename, contentType: 'text/plain' };
    },
  };
}

const create = (body: Body & { name?: string }) => ({ ...uploadOf(body), fields: { name: body.name ?? 'a.txt' } }) satisfies CreateUpload;
const replace = (body: Body & { ifMatch?: string }) => ({ ...uploadOf(body), ifMatch: body.ifMatch }) satisfies ReplaceUpload;

describe('upload workflow', () => {
  let files: FakeFiles;
  let uploads: FileUploads;
  beforeEach(() => {
    files = new FakeFiles();
    uploads = new FileUploads(files);
  });

  it('refuses a declared size over the limit with 413 before reading the body', async () => {
    const upload = create({ declaredBytes: MAX + 1 });
    await rejectsWith(uploads.createFromUpload(principal, upload), 413, 'payload_too_large');
    assert.equal(upload.source.reads, 0, 'the body was not read');
    assert.equal(upload.source.started, false);
    assert.deepEqual(files.calls, ['checkDeclaredSize']);
    assert.equal(files.staged.length, 0);
  });

  it('allows multipart framing over the declared size, but no more', async () => {
    const framed = create({ declaredBytes: MAX + FRAMING_SLACK, framed: true });
    assert.equal((await uploads.createFromUpload(principal, framed)).status, 201);
    await rejectsWith(uploads.createFromUpload(principal, create({ declaredBytes: MAX + FRAMING_SLACK + 1, framed: true, name: 'b.txt' })), 413, 'payload_too_large');
    await rejectsWith(uploads.createFromUpload(principal, create({ declaredBytes: MAX + 1, framed: false, name: 'c.txt' })), 413, 'payload_too_large');
  });

  it('a replace checks the file before the declared size, and reads nothing', async () => {
    const upload = replace({ declaredBytes: MAX + 1 });
    await rejectsWith(uploads.replaceFromUpload(principal, 'file_nope', upload), 404, 'not_found');
    assert.deepEqual(files.calls, ['precheckReplace']);
    assert.equal(upload.source.reads, 0);
  });

  it('creates: stages, commits exactly once, then writes; nothing discarded', async () => {
    const answer = await uploads.createFromUpload(principal, create({ text: 'first' }));
    assert.equal(answer.status, 201);
    assert.equal(answer.replayed, false);
    assert.equal(answer.file.sha256, sha256(Buffer.from('first')));
    assert.deepEqual(files.staged, [{ sha256: answer.file.sha256, committed: 1, discarded: 0 }]);
    assert.deepEqual(files.calls, ['checkDeclaredSize', 'precheckCreate', 'stageContent', 'create']);
  });

  it('checks a taken name before reading a large or unsized body, not a small one that came with the request', async () => {
    await uploads.createFromUpload(principal, create({ declaredBytes: PRECHECK_FROM_BYTES, framed: true, name: 'large.txt' }));
    assert.deepEqual(files.calls, ['checkDeclaredSize', 'precheckCreate', 'stageContent', 'create']);
    files.calls = [];
    await uploads.createFromUpload(principal, create({ declaredBytes: PRECHECK_FROM_BYTES - 1, framed: true, name: 'small.txt' }));
    assert.deepEqual(files.calls, ['checkDeclaredSize', 'stageContent', 'create']);
  });

  it('replays a retry under the same Idempotency-Key: the first answer, nothing stored again', async () => {
    const first = await uploads.createFromUpload(principal, create({ text: 'once', idempotencyKey: 'k1' }));
    const blobs = files.blobs.size;
    files.calls = [];
    const retry = await uploads.createFromUpload(principal, create({ text: 'once', idempotencyKey: 'k1' }));
    assert.equal(retry.replayed, true);
    assert.equal(retry.status, 201);
    assert.deepEqual(retry.file, first.file);
    assert.equal(files.staged.length, 1, 'the retry staged nothing');
    assert.equal(files.blobs.size, blobs);
    assert.equal(files.files.size, 1);
    assert.deepEqual(files.calls, ['checkDeclaredSize', 'recordedAnswer', 'hashContent']);
  });

  it('answers 409 idempotency_conflict to another request under the same key, storing nothing', async () => {
    await uploads.createFromUpload(principal, create({ text: 'once', idempotencyKey: 'k1' }));
    for (const other of [create({ text: 'another body', idempotencyKey: 'k1' }), create({ text: 'once', idempotencyKey: 'k1', name: 'other.txt' })]) {
      await rejectsWith(uploads.createFromUpload(principal, other), 409, 'idempotency_conflict');
    }
    assert.equal(files.staged.length, 1);
    assert.equal(files.files.size, 1);
  });

  it('replays a replace, though its If-Match is stale by now; another body is a 409', async () => {
    files.files.set('file_1', { name: 'a.txt', sha256: 'old', version: 1 });
    const first = await uploads.replaceFromUpload(principal, 'file_1', replace({ text: 'v2', idempotencyKey: 'r1', ifMatch: '"old"' }));
    assert.equal(first.file.version, 2);
    const retry = await uploads.replaceFromUpload(principal, 'file_1', replace({ text: 'v2', idempotencyKey: 'r1', ifMatch: '"old"' }));
    assert.deepEqual(retry, { ...first, replayed: true });
    await rejectsWith(uploads.replaceFromUpload(principal, 'file_1', replace({ text: 'v3', idempotencyKey: 'r1', ifMatch: '"old"' })), 409, 'idempotency_conflict');
    await rejectsWith(uploads.replaceFromUpload(principal, 'file_2', replace({ text: 'v2', idempotencyKey: 'r1', ifMatch: '"old"' })), 409, 'idempotency_conflict');
    assert.equal(files.staged.length, 1);
    assert.equal(files.files.get('file_1')?.version, 2);
  });

  it('answers 409 file_exists on a taken name before a byte is stored (raw and multipart)', async () => {
    files.taken.add('/ a.txt');
    const raw = create({ name: 'a.txt' });
    await rejectsWith(uploads.createFromUpload(principal, raw), 409, 'file_exists');
    const multipart = { ...create({ framed: true, before: { fields: { path: '/' }, filename: 'a.txt' } }), fields: {} };
    await rejectsWith(uploads.createFromUpload(principal, multipart), 409, 'file_exists');
    for (const upload of [raw, multipart]) assert.equal(upload.source.started, false, 'the content was not read');
    assert.equal(files.calls.includes('stageContent'), false);
    assert.equal(files.staged.length, 0);
  });

  it('discards staged content when the body fails after it, never committing', async () => {
    const cutShort = create({ framed: true, failAfter: new AppError(Errors.malformedBody, 'cut short') });
    await rejectsWith(uploads.createFromUpload(principal, cutShort), 400, 'malformed_body');
    const badFieldAfter = create({ framed: true, after: { name: '..' } });
    await rejectsWith(uploads.createFromUpload(principal, badFieldAfter), 422, 'validation_failed');
    files.files.set('file_1', { name: 'a.txt', sha256: 'old', version: 1 });
    const replaceCut = replace({ framed: true, failAfter: new AppError(Errors.malformedBody, 'cut short') });
    await rejectsWith(uploads.replaceFromUpload(principal, 'file_1', replaceCut), 400, 'malformed_body');
    assert.equal(files.staged.length, 3);
    for (const staged of files.staged) assert.deepEqual({ committed: staged.committed, discarded: staged.discarded }, { committed: 0, discarded: 1 });
    assert.equal(files.calls.includes('create') || files.calls.includes('replace'), false);
    assert.equal(files.blobs.size, 0);
  });

  it('does not discard content once committed, when the write itself fails', async () => {
    files.failCreate = new AppError(Errors.quotaExceeded, 'over quota');
    await rejectsWith(uploads.createFromUpload(principal, create({})), 413, 'quota_exceeded');
    assert.deepEqual(files.staged.map((s) => [s.committed, s.discarded]), [[1, 0]]);
  });
});
