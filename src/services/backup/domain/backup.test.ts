import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { beforeEach, describe, it } from 'node:test';
import pino from 'pino';
import { rejectsWith } from '../../../../test/helpers/app-error.ts';
import { MemoryBlobStore } from '../../../adapters/blob/memory.ts';
import type { BusEvent } from '../../../core/events.ts';
import { type BlobStore, type ConsumerStatus, type DeadLetter, type EventBus, type EventHandler, PoisonEventError } from '../../../core/ports.ts';
import type { Environment, TenantPrincipal } from '../../../core/principal.ts';
import { BACKUP_CONSUMER, BackupService, usageOf } from './backup.service.ts';
import { DAY_MS, FakeClock, FakeFiles, MemoryBackupRepository } from './fakes.ts';

// The backup domain on its own, against in-memory fakes of its ports (the repository, the
// files service and its blob store, the backup store, the bus): what it copies and records
// for each event, what a redelivery changes (nothing), what retention removes, what a restore
// asks of the files service, and who sees what.

const silent = pino({ level: 'silent' });
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

const account = (tenantId: string, environment: Environment = 'test'): TenantPrincipal => ({ kind: 'account_key', keyId: `key_${tenantId}`, tenantId, environment });
const user = (tenantId: string, userId: string, role: 'user' | 'admin' = 'user'): TenantPrincipal => ({ kind: 'user', userId, tenantId, environment: 'test', role });
const appKey = (tenantId: string): TenantPrincipal => ({ kind: 'application_key', keyId: 'app_1', tenantId, environment: 'test', scopes: ['files:read', 'files:write'] });

const A = account('ten_a');
const B = account('ten_b');

/** The bus as the backup sees it: consumer status per tenant, and the dead letters it holds. */
class FakeBus implements Pick<EventBus, 'status' | 'redeliverDeadLetters'> {
  statuses = new Map<string, ConsumerStatus[]>();
  asked: Array<[string, string | undefined]> = [];
  deadLetters: DeadLetter[] = [];

  async status(name: string, tenantId?: string): Promise<ConsumerStatus[]> {
    this.asked.push([name, tenantId]);
    return this.statuses.get(tenantId ?? '') ?? [];
  }

  async redeliverDeadLetters(name: string, handler: EventHandler): Promise<{ delivered: DeadLetter[]; remaining: DeadLetter[] }> {
    this.asked.push([name, undefined]);
    const delivered: DeadLetter[] = [];
    const remaining: DeadLetter[] = [];
    for (const letter of this.deadLetters) {
      try {
        await handler(letter.event);
        delivered.push(letter);
      } catch (error) {
        remaining.push({ ...letter, attempts: letter.attempts + 1, error: (error as Error).message });
      }
    }
    this.deadLetters = remaining;
    return { delivered, remaining };
  }
}

async function text(stream: AsyncIterable<Buffer>): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

let clock: FakeClock;
let repository: MemoryBackupRepository;
let files: FakeFiles;
let store: Record<Environment, MemoryBlobStore>;
let bus: FakeBus;
let observed: Environment[];
let backup: BackupService;
/** Calls of the backup store's `put`: each is one copy. */
let copies: string[];

beforeEach(() => {
  clock = new FakeClock();
  repository = new MemoryBackupRepository({ now: clock.now });
  files = new FakeFiles(clock);
  store = { live: new MemoryBlobStore(), test: new MemoryBlobStore() };
  copies = [];
  for (const environment of ['live', 'test'] as const) {
    const target = store[environment];
    const put = target.put.bind(target);
    target.put = async (source, options) => {
      const stored = await put(source, options);
      copies.push(`${environment} ${stored.sha256}`);
      return stored;
    };
  }
  bus = new FakeBus();
  observed = [];
  backup = new BackupService({
    repository,
    sources: files.blobs,
    store,
    bus,
    files,
    logger: silent,
    observer: { recorded: (environment) => observed.push(environment) },
  });
});

/** Hands the files service's events since the last call to the backup, one at a time, as the bus would. */
async function deliver(): Promise<BusEvent[]> {
  const events = files.take();
  for (const event of events) await backup.record(event);
  return events;
}

/** The history of a file as (version, event) pairs. */
async function history(principal: TenantPrincipal, fileId: string): Promise<string[]> {
  return (await backup.listVersions(principal, fileId, { limit: 100 })).data.map((entry) => `v${entry.version} ${entry.event}`);
}

describe('recording a version when its event arrives', () => {
  it("copies the version's bytes into the backup store and records its entry", async () => {
    const file = await files.create(A, { name: 'a.txt', path: '/docs', content: 'hello', owner_id: 'usr_1' });
    const [event] = await deliver();
    assert.deepEqual(await text(await store.test.get(file.sha256)), 'hello');
    assert.deepEqual(copies, [`test ${file.sha256}`]);
    const page = await backup.listVersions(A, file.id, { limit: 10 });
    assert.deepEqual(page, {
      data: [
        {
          version: 1,
          event: 'File_create',
          name: 'a.txt',
          path: '/docs',
          size: 5,
          sha256: sha256('hello'),
          content_type: 'text/plain',
          created_at: file.updated_at,
          backed_up_at: clock.now().toISOString(),
        },
      ],
      next_cursor: null,
    });
    assert.equal(repository.entries('test')[0]?.event_id, event?.event_id);
    assert.deepEqual(observed, ['test'], 'the lag observer saw one recorded version');
  });

  it('changes nothing on redelivery: no second copy, no second entry', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'once' });
    const [event] = files.take();
    assert.ok(event);
    await backup.record(event);
    await backup.record(event);
    await backup.recordBatch([event, event]);
    assert.deepEqual(copies, [`test ${file.sha256}`], 'copied once');
    assert.deepEqual(await history(A, file.id), ['v1 File_create']);
    assert.deepEqual(observed, ['test'], 'a redelivery is not counted as recorded');
  });

  it('after a failure between copy and record, the redelivery records the entry without copying again', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'crash' });
    const [event] = files.take();
    assert.ok(event);
    const inTenant = repository.inTenant.bind(repository);
    repository.inTenant = async () => {
      throw new Error('database gone');
    };
    await assert.rejects(backup.record(event), /database gone/);
    assert.ok(await store.test.stat(file.sha256), 'the bytes were copied');
    assert.equal(repository.entries('test').length, 0);
    repository.inTenant = inTenant;
    await backup.record(event);
    assert.deepEqual(await history(A, file.id), ['v1 File_create']);
    assert.equal(copies.length, 1);
  });

  it('stores equal bytes once, whatever the file or version', async () => {
    const one = await files.create(A, { name: 'a.txt', content: 'same' });
    await files.create(A, { name: 'b.txt', content: 'same' });
    await files.update(A, one.id, { name: 'renamed.txt' });
    await deliver();
    assert.deepEqual(copies, [`test ${sha256('same')}`]);
    assert.equal(repository.entries('test').length, 3);
    assert.equal((await backup.status(A)).bytes, 4, 'distinct bytes');
  });

  it("records a batch in one transaction per tenant, locking the batch's blobs before it records", async () => {
    await files.create(A, { name: 'a.txt', content: 'x' });
    await files.create(B, { name: 'b.txt', content: 'y' });
    await files.create(A, { name: 'c.txt', content: 'y' });
    await backup.recordBatch(files.take());
    const [x, y] = [sha256('x'), sha256('y')].sort();
    assert.deepEqual(repository.journal, [`lockBlobs ten_a ${x},${y}`, 'insertVersions ten_a 2 -> 2', `lockBlobs ten_b ${sha256('y')}`, 'insertVersions ten_b 1 -> 1']);
    assert.equal(copies.length, 2, 'each distinct blob copied once');
    assert.deepEqual(
      repository.entries('test').map((row) => [row.tenant_id, row.name]),
      [
        ['ten_a', 'a.txt'],
        ['ten_a', 'c.txt'],
        ['ten_b', 'b.txt'],
      ],
    );
  });

  it('fails the batch and records nothing when a blob was swept after its copy; the retry copies it again', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'swept' });
    const events = files.take();
    const inTenant = repository.inTenant.bind(repository);
    // The sweep runs between the copy and the transaction that records the version.
    repository.inTenant = async (environment, tenantId, work) => {
      await store.test.delete(file.sha256);
      return inTenant(environment, tenantId, work);
    };
    await assert.rejects(backup.recordBatch(events), /was swept before its version was recorded/);
    assert.equal(repository.entries('test').length, 0);
    repository.inTenant = inTenant;
    await backup.recordBatch(events);
    assert.deepEqual(await history(A, file.id), ['v1 File_create']);
    assert.equal(copies.length, 2);
    assert.ok(await store.test.stat(file.sha256));
  });

  it('records a delete as an entry of its own, made at the time of the delete', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'bye' });
    await files.remove(A, file.id);
    const events = await deliver();
    const entries = (await backup.listVersions(A, file.id, { limit: 10 })).data;
    assert.deepEqual(
      entries.map((entry) => [entry.version, entry.event, entry.sha256]),
      [
        [1, 'File_create', file.sha256],
        [1, 'File_delete', file.sha256],
      ],
    );
    assert.equal(entries[1]?.created_at, events[1]?.occurred_at);
    assert.notEqual(entries[1]?.created_at, file.updated_at);
  });

  it('ignores events that are not file events', async () => {
    const event: BusEvent = {
      event_id: 'evt_user',
      type: 'User_create',
      tenant_id: 'ten_a',
      environment: 'test',
      occurred_at: clock.now().toISOString(),
      actor: { type: 'system', id: 'x' },
      data: {},
    };
    await backup.record(event);
    assert.deepEqual(repository.journal, []);
    assert.equal(copies.length, 0);
  });

  it('sets aside (PoisonEventError) an event whose File object is missing or malformed', async () => {
    await files.create(A, { name: 'a.txt', content: 'ok' });
    const [event] = files.take();
    assert.ok(event);
    const file = (event.data as { file: Record<string, unknown> }).file;
    for (const data of [{}, { file: { ...file, sha256: 'NOT-A-SHA' } }, { file: { ...file, version: '1' } }]) {
      await assert.rejects(backup.record({ ...event, data }), PoisonEventError);
    }
    assert.equal(copies.length, 0);
    assert.equal(repository.entries('test').length, 0);
  });

  it('sets aside an event whose bytes the files store lacks', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'gone' });
    await files.blobs.test.delete(file.sha256);
    await assert.rejects(deliver(), (error: unknown) => error instanceof PoisonEventError && /has no blob/.test(error.message));
    assert.equal(repository.entries('test').length, 0);
  });

  it('sets aside an event whose bytes are not the ones it names, and records nothing', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'right' });
    const [event] = files.take();
    assert.ok(event);
    const mismatch = (error: unknown) => error instanceof PoisonEventError && /checksum mismatch/.test(error.message);
    const blob = files.blobs.test.blobs.get(file.sha256);
    assert.ok(blob);
    blob.bytes = Buffer.from('wrong');
    await assert.rejects(backup.record(event), mismatch);
    assert.equal(await store.test.stat(file.sha256), null, 'nothing stored under the hash the event names');
    blob.bytes = Buffer.from('right');
    await assert.rejects(backup.record({ ...event, data: { file: { ...file, size: 99 } } }), mismatch, 'the right bytes, but not the size the event names');
    assert.equal(repository.entries('test').length, 0);
    assert.deepEqual(await backup.sweep(), { entries: 0, blobs: 2 }, 'the sweep removes what the failed copies stored');
  });

  it('copies inside the storage service when the backup store can (copyFrom): no read through the process, the size checked', async () => {
    // What S3 to S3 on one service does: the bytes move between the stores, not through the backup.
    const target: BlobStore = store.test;
    target.copyFrom = async (source, key) => {
      const blob = source === files.blobs.test ? files.blobs.test.blobs.get(key) : undefined;
      if (source !== files.blobs.test) return null;
      if (!blob) throw Object.assign(new Error(`no blob ${key}`), { code: 'ENOENT' });
      store.test.blobs.set(key, { bytes: blob.bytes, modifiedAt: new Date() });
      return { key, sha256: key, size: blob.bytes.length };
    };
    const get = files.blobs.test.get.bind(files.blobs.test);
    files.blobs.test.get = async () => {
      throw new Error('read through the process');
    };
    const file = await files.create(A, { name: 'a.txt', content: 'copied inside' });
    const [event] = files.take();
    assert.ok(event);
    await backup.record(event);
    assert.deepEqual(copies, [], 'no put: nothing streamed');
    assert.equal(await text(await store.test.get(file.sha256)), 'copied inside');
    assert.equal(repository.entries('test').length, 1);

    const other = await files.create(A, { name: 'b.txt', content: 'another' });
    const [wrongSize] = files.take();
    assert.ok(wrongSize);
    const poison = (pattern: RegExp) => (error: unknown) => error instanceof PoisonEventError && pattern.test(error.message);
    await assert.rejects(backup.record({ ...wrongSize, data: { file: { ...other, size: 99 } } }), poison(/size mismatch/));
    assert.equal(await store.test.stat(other.sha256), null, 'nothing left under the hash the event names');
    files.blobs.test.blobs.delete(other.sha256);
    await assert.rejects(backup.record(wrongSize), poison(/the files store has no blob/));
    files.blobs.test.get = get;
  });

  it('throws as it is (not poison, so retried until it passes) when a store fails', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'eio' });
    const [event] = files.take();
    assert.ok(event);
    const get = files.blobs.test.get.bind(files.blobs.test);
    files.blobs.test.get = async () => {
      throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
    };
    await assert.rejects(backup.record(event), (error: unknown) => !(error instanceof PoisonEventError) && /EIO/.test(String(error)));
    files.blobs.test.get = get;
    const put = store.test.put;
    store.test.put = async () => {
      throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    };
    await assert.rejects(backup.record(event), (error: unknown) => !(error instanceof PoisonEventError) && /ENOSPC/.test(String(error)));
    store.test.put = put;
    await backup.record(event);
    assert.deepEqual(await history(A, file.id), ['v1 File_create']);
  });

  it('records dead letters again on demand: those that pass are backed up, the others stay', async () => {
    const good = await files.create(A, { name: 'good.txt', content: 'good' });
    const bad = await files.create(A, { name: 'bad.txt', content: 'bad' });
    await files.blobs.test.delete(bad.sha256);
    bus.deadLetters = files.take().map((event) => ({ event, attempts: 5, error: 'earlier', set_aside_at: clock.now().toISOString() }));
    const result = await backup.retryDeadLetters();
    assert.deepEqual(bus.asked, [[BACKUP_CONSUMER, undefined]]);
    assert.deepEqual(
      result.delivered.map((letter) => (letter.event.data as { file: { id: string } }).file.id),
      [good.id],
    );
    assert.equal(result.remaining.length, 1);
    assert.match(result.remaining[0]?.error ?? '', /has no blob/);
    assert.deepEqual(await history(A, good.id), ['v1 File_create']);
    await rejectsWith(backup.listVersions(A, bad.id, { limit: 10 }), 404, 'not_found');
  });
});

describe('listing a history', () => {
  it('lists oldest first, each delete after the content entry of its version, and pages without losing or repeating an entry', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'v1' });
    for (const content of ['v2', 'v3']) await files.update(A, file.id, { content });
    await files.remove(A, file.id);
    await deliver();
    await backup.restore(A, file.id, 2);
    await files.update(A, file.id, { content: 'v5' });
    await deliver();
    // A page may end on a delete with more entries after it (limit 2 and 4): the cursor tells the delete from its content entry.
    const all = ['v1 File_create', 'v2 File_update', 'v3 File_update', 'v3 File_delete', 'v4 File_create', 'v5 File_update'];
    assert.deepEqual(await history(A, file.id), all);
    for (const limit of [1, 2, 3, 4, 5, 6, 7]) {
      const seen: string[] = [];
      let cursor: string | undefined;
      let pages = 0;
      do {
        const page = await backup.listVersions(A, file.id, { limit, cursor });
        assert.ok(page.data.length <= limit);
        seen.push(...page.data.map((entry) => `v${entry.version} ${entry.event}`));
        cursor = page.next_cursor ?? undefined;
        pages++;
      } while (cursor);
      assert.deepEqual(seen, all, `limit ${limit}`);
      assert.equal(pages, Math.ceil(all.length / limit), `limit ${limit}: no empty last page`);
    }
  });

  it('refuses a cursor it did not give with 422 validation_failed', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'x' });
    await deliver();
    for (const cursor of ['nonsense', Buffer.from('1.2').toString('base64url'), Buffer.from('x.0').toString('base64url')]) {
      await rejectsWith(backup.listVersions(A, file.id, { limit: 10, cursor }), 422, 'validation_failed');
    }
  });

  it("shows a user their own files' history only; admins and keys see every file of the tenant", async () => {
    const owner = user('ten_a', 'usr_1');
    const mine = await files.create(owner, { name: 'mine.txt', content: 'm' });
    await deliver();
    assert.deepEqual(await history(owner, mine.id), ['v1 File_create']);
    const other = user('ten_a', 'usr_2');
    await rejectsWith(backup.listVersions(other, mine.id, { limit: 10 }), 404, 'not_found');
    await rejectsWith(backup.findVersion(other, mine.id, 1), 404, 'not_found');
    await rejectsWith(backup.restore(other, mine.id, 1), 404, 'not_found');
    await rejectsWith(backup.latestVersion(other, mine.id), 404, 'not_found');
    for (const reader of [user('ten_a', 'usr_9', 'admin'), A, appKey('ten_a')]) assert.deepEqual(await history(reader, mine.id), ['v1 File_create']);
    assert.equal(files.restores.length, 0);
  });

  it('answers 404 not_found for a file with no history, and for a version the history lacks', async () => {
    await rejectsWith(backup.listVersions(A, 'file_nope', { limit: 10 }), 404, 'not_found');
    const file = await files.create(A, { name: 'a.txt', content: 'x' });
    await deliver();
    await rejectsWith(backup.findVersion(A, file.id, 2), 404, 'not_found');
    assert.equal((await backup.findVersion(A, file.id, 1)).sha256, file.sha256);
  });

  it("opens a version's bytes from the backup store, whole or by range", async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'hello world' });
    await deliver();
    await files.blobs.test.delete(file.sha256);
    const entry = await backup.findVersion(A, file.id, 1);
    assert.equal(await text(await backup.openVersion(A, entry)), 'hello world');
    assert.equal(await text(await backup.openVersion(A, entry, { start: 6, end: 10 })), 'world');
  });
});

describe('restoring a version', () => {
  it('asks the files service for a new version equal to the old one; its event is backed up in turn', async () => {
    const file = await files.create(A, { name: 'a.txt', path: '/docs', content: 'first' });
    await files.update(A, file.id, { content: 'second', name: 'b.txt' });
    await deliver();
    const restored = await backup.restore(A, file.id, 1);
    assert.deepEqual(
      files.restores.map(({ tenant_id, id, version, opened }) => ({
        tenant_id,
        id,
        opened,
        version: { sha256: version.sha256, size: version.size, content_type: version.content_type, name: version.name, path: version.path },
      })),
      [{ tenant_id: 'ten_a', id: file.id, opened: false, version: { sha256: sha256('first'), size: 5, content_type: 'text/plain', name: 'a.txt', path: '/docs' } }],
      'the files store had the bytes: the backup was not read',
    );
    assert.deepEqual([restored.version, restored.sha256, restored.name], [3, sha256('first'), 'a.txt']);
    await deliver();
    assert.deepEqual(await history(A, file.id), ['v1 File_create', 'v2 File_update', 'v3 File_update']);
    assert.equal(copies.length, 2, 'the restored bytes were already backed up');
  });

  it("hands over the backup's bytes when the files store lacks them", async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'only in the backup' });
    await files.update(A, file.id, { content: 'newer' });
    await deliver();
    await files.blobs.test.delete(file.sha256);
    await backup.restore(A, file.id, 1);
    assert.equal(files.restores[0]?.opened, true);
    assert.equal(await text(await files.blobs.test.get(file.sha256)), 'only in the backup');
  });

  it('brings a deleted file back under its id, from its newest content version', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'one' });
    await files.update(A, file.id, { content: 'two' });
    await files.remove(A, file.id);
    await deliver();
    const version = await backup.latestVersion(A, file.id);
    assert.equal(version, 2);
    const restored = await backup.restore(A, file.id, version);
    assert.deepEqual([restored.id, restored.sha256, restored.version], [file.id, sha256('two'), 3]);
    const [event] = await deliver();
    assert.equal(event?.type, 'File_create');
    assert.deepEqual(await history(A, file.id), ['v1 File_create', 'v2 File_update', 'v2 File_delete', 'v3 File_create']);
  });

  it('refuses a version the backup does not hold with 404 not_found, asking nothing of the files service', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'x' });
    await deliver();
    await rejectsWith(backup.restore(A, file.id, 7), 404, 'not_found');
    await rejectsWith(backup.restore(A, 'file_nope', 1), 404, 'not_found');
    await rejectsWith(backup.latestVersion(A, 'file_nope'), 404, 'not_found');
    assert.equal(files.restores.length, 0);
  });
});

describe('retention', () => {
  it("keep_last N keeps each file's N newest versions; the sweep then deletes the blobs no entry uses", async () => {
    const a = await files.create(A, { name: 'a.txt', content: 'one' });
    await files.update(A, a.id, { content: 'two' });
    await files.update(A, a.id, { content: 'three' });
    const b = await files.create(A, { name: 'b.txt', content: 'one' });
    await deliver();
    await backup.setPolicy(A, { keep_last: 1 });
    assert.deepEqual(await backup.sweep(), { entries: 2, blobs: 1 });
    assert.deepEqual(await history(A, a.id), ['v3 File_update']);
    assert.deepEqual(await history(A, b.id), ['v1 File_create']);
    assert.equal(await store.test.stat(sha256('two')), null, 'no entry uses it any more');
    assert.ok(await store.test.stat(sha256('one')), 'b.txt still uses it');
    assert.ok(await store.test.stat(sha256('three')));
    assert.deepEqual(await backup.sweep(), { entries: 0, blobs: 0 }, 'a second sweep finds nothing');
  });

  it("keep_last never removes a deleted file's last version", async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'one' });
    await files.update(A, file.id, { content: 'two' });
    await files.remove(A, file.id);
    await deliver();
    await backup.setPolicy(A, { keep_last: 1 });
    await backup.sweep();
    assert.deepEqual(await history(A, file.id), ['v2 File_update', 'v2 File_delete']);
    assert.equal(await backup.latestVersion(A, file.id), 2);
  });

  it("keep_days D removes entries made more than D days ago, but never a file's newest version", async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'day 0' });
    const old = await files.create(A, { name: 'old.txt', content: 'old' });
    clock.advance(DAY_MS);
    await files.update(A, file.id, { content: 'day 1' });
    clock.advance(4 * DAY_MS);
    await files.update(A, file.id, { content: 'day 5' });
    await deliver();
    clock.advance(5 * DAY_MS);
    await backup.setPolicy(A, { keep_days: 7 });
    assert.deepEqual(await backup.sweep(), { entries: 2, blobs: 2 });
    assert.deepEqual(await history(A, file.id), ['v3 File_update']);
    assert.deepEqual(await history(A, old.id), ['v1 File_create'], 'older than 7 days, but the newest version');
  });

  it('keeps everything by default; the sweep still deletes bytes no entry uses (a failed copy left them)', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'one' });
    await files.update(A, file.id, { content: 'two' });
    await deliver();
    const stray = await store.test.put(Readable.from([Buffer.from('left behind')]));
    const remove = store.test.delete.bind(store.test);
    store.test.delete = async (key) => {
      repository.journal.push(`delete ${key}`);
      await remove(key);
    };
    assert.deepEqual(await backup.getPolicy(A), { keep: 'all' });
    assert.deepEqual(await backup.sweep(), { entries: 0, blobs: 1 });
    assert.equal(await store.test.stat(stray.sha256), null);
    assert.deepEqual(await history(A, file.id), ['v1 File_create', 'v2 File_update']);
    assert.deepEqual(
      repository.journal.filter((line) => !line.startsWith('lockBlobs') && !line.startsWith('insertVersions')),
      [`lockBlob ${stray.sha256}`, `delete ${stray.sha256}`],
      'deleted under its lock; blobs in use are not even locked',
    );
  });

  it('checks again under the lock: bytes a version came to use meanwhile are kept', async () => {
    const file = await files.create(A, { name: 'a.txt', content: 'late' });
    const [event] = files.take();
    assert.ok(event);
    // Copied, but not recorded yet, when the sweep first looks at the blob.
    await store.test.put(await files.blobs.test.get(file.sha256));
    const blobInUse = repository.blobInUse.bind(repository);
    repository.blobInUse = async (environment, sha) => {
      const answer = await blobInUse(environment, sha);
      await backup.record(event);
      return answer;
    };
    assert.deepEqual(await backup.sweep(), { entries: 0, blobs: 0 });
    assert.ok(await store.test.stat(file.sha256), 'the version recorded meanwhile keeps its bytes');
    assert.deepEqual(await history(A, file.id), ['v1 File_create']);
  });

  it("applies each tenant's policy to its own history only, and keeps blobs another tenant still uses", async () => {
    const a = await files.create(A, { name: 'a.txt', content: 'shared' });
    await files.update(A, a.id, { content: 'newer' });
    const b = await files.create(B, { name: 'b.txt', content: 'first' });
    await files.update(B, b.id, { content: 'shared' });
    await deliver();
    await backup.setPolicy(A, { keep_last: 1 });
    assert.deepEqual(await backup.sweep(), { entries: 1, blobs: 0 });
    assert.deepEqual(await history(A, a.id), ['v2 File_update']);
    assert.deepEqual(await history(B, b.id), ['v1 File_create', 'v2 File_update']);
    assert.ok(await store.test.stat(sha256('shared')), "tenant B's version uses it");
  });

  it('lets an account key set the policy, admins read it, and no one else', async () => {
    const admin = user('ten_a', 'usr_9', 'admin');
    assert.deepEqual(await backup.setPolicy(A, { keep_last: 3 }), { keep_last: 3 });
    assert.deepEqual(await backup.getPolicy(admin), { keep_last: 3 });
    assert.deepEqual(await backup.setPolicy(A, { keep_days: 30 }), { keep_days: 30 });
    assert.deepEqual(await backup.getPolicy(A), { keep_days: 30 });
    assert.deepEqual(await backup.getPolicy(B), { keep: 'all' }, "another tenant's policy is its own");
    await rejectsWith(backup.setPolicy(admin, { keep_last: 1 }), 403, 'forbidden');
    await rejectsWith(backup.setPolicy(appKey('ten_a'), { keep_last: 1 }), 403, 'forbidden');
    await rejectsWith(backup.getPolicy(user('ten_a', 'usr_1')), 403, 'forbidden');
    await rejectsWith(backup.getPolicy(appKey('ten_a')), 403, 'forbidden');
    assert.deepEqual(await backup.setPolicy(A, { keep: 'all' }), { keep: 'all' });
    assert.deepEqual(await backup.getPolicy(A), { keep: 'all' });
  });
});

describe('status and usage', () => {
  it("reports the tenant's versions, distinct bytes and last backup, with the bus's counts for its environment", async () => {
    await files.create(A, { name: 'a.txt', content: 'abc' });
    await files.create(A, { name: 'b.txt', content: 'abc' });
    await files.create(A, { name: 'c.txt', content: 'de' });
    await files.create(B, { name: 'd.txt', content: 'fghij' });
    await deliver();
    const at = clock.now().toISOString();
    const status = (environment: Environment, pending: number, deadLetters: number): ConsumerStatus => ({
      consumer: BACKUP_CONSUMER,
      environment,
      pending,
      deadLetters,
      lastDeliveredAt: null,
    });
    bus.statuses.set('ten_a', [status('live', 40, 4), status('test', 2, 1)]);
    assert.deepEqual(await backup.status(A), { pending_events: 2, last_backup_at: at, versions: 3, bytes: 5, dead_letters: 1 });
    assert.deepEqual(bus.asked, [[BACKUP_CONSUMER, 'ten_a']]);
    assert.deepEqual(await backup.status(account('ten_a', 'live')), { pending_events: 40, last_backup_at: null, versions: 0, bytes: 0, dead_letters: 4 });
    assert.deepEqual(await backup.status(user('ten_a', 'usr_9', 'admin')), await backup.status(A));
  });

  it('keeps the status for account keys and admins', async () => {
    await rejectsWith(backup.status(user('ten_a', 'usr_1')), 403, 'forbidden');
    await rejectsWith(backup.status(appKey('ten_a')), 403, 'forbidden');
  });

  it("tells the files service the distinct bytes held for the principal's tenant and environment", async () => {
    await files.create(A, { name: 'a.txt', content: '1234' });
    await files.create(A, { name: 'b.txt', content: '1234' });
    await files.create(A, { name: 'c.txt', content: '56' });
    await files.create(B, { name: 'c.txt', content: '789' });
    await deliver();
    const usage = usageOf(repository);
    assert.equal(await usage.heldBytes(A), 6);
    assert.equal(await usage.heldBytes(B), 3);
    assert.equal(await usage.heldBytes(account('ten_a', 'live')), 0);
  });
});

describe('tenant and environment isolation', () => {
  it("never shows one tenant another's history, versions, bytes or files", async () => {
    const file = await files.create(A, { name: 'secret.txt', content: 'secret' });
    await deliver();
    await rejectsWith(backup.listVersions(B, file.id, { limit: 10 }), 404, 'not_found');
    await rejectsWith(backup.findVersion(B, file.id, 1), 404, 'not_found');
    await rejectsWith(backup.latestVersion(B, file.id), 404, 'not_found');
    await rejectsWith(backup.restore(B, file.id, 1), 404, 'not_found');
    assert.deepEqual(await backup.status(B), { pending_events: 0, last_backup_at: null, versions: 0, bytes: 0, dead_letters: 0 });
    assert.deepEqual(await backup.planAsOf(B, clock.now()), { remove: [], restore: [], unchanged: 0, notBackedUp: [] });
    assert.equal(files.restores.length, 0);
    assert.deepEqual(await history(A, file.id), ['v1 File_create'], 'its own tenant sees it');
  });

  it('keeps environments apart: a live version is copied to the live store and seen only from live', async () => {
    const live = account('ten_a', 'live');
    const file = await files.create(live, { name: 'a.txt', content: 'live bytes' });
    await deliver();
    assert.deepEqual(copies, [`live ${file.sha256}`]);
    assert.equal(await store.test.stat(file.sha256), null);
    assert.deepEqual(await history(live, file.id), ['v1 File_create']);
    await rejectsWith(backup.listVersions(A, file.id, { limit: 10 }), 404, 'not_found');
  });
});

describe('verify', () => {
  it('re-hashes every blob and reports the missing and altered ones with the versions they hold', async () => {
    const kept = await files.create(A, { name: 'kept.txt', content: 'intact' });
    const lost = await files.create(A, { name: 'lost.txt', content: 'lost' });
    const altered = await files.create(B, { name: 'altered.txt', content: 'altered' });
    await files.update(B, altered.id, { name: 'renamed.txt' });
    await deliver();
    // An entry that names the right bytes with the wrong size (a damaged history row).
    const row = repository.entries('test').find((entry) => entry.file_id === kept.id);
    assert.ok(row);
    await repository.inTenant('test', 'ten_a', (tx) => tx.insertVersions([{ ...row, file_id: 'file_wrong_size', event_id: 'evt_wrong_size', size: 99 }]));
    await store.test.delete(lost.sha256);
    const blob = store.test.blobs.get(altered.sha256);
    assert.ok(blob);
    blob.bytes = Buffer.from('ALTERED');
    const progress: Array<[number, number]> = [];
    const result = await backup.verify((done, total) => progress.push([done, total]));
    assert.deepEqual({ blobs: result.blobs, versions: result.versions }, { blobs: 4, versions: 5 });
    const damaged = result.damaged.map((d) => ({ ...d, reason: d.reason.split(' ')[0] })).sort((x, y) => x.sha256.localeCompare(y.sha256));
    const expected = [
      { environment: 'test', sha256: lost.sha256, reason: 'missing', versions: [{ tenant_id: 'ten_a', file_id: lost.id, version: 1, event: 'File_create' }] },
      { environment: 'test', sha256: kept.sha256, reason: 'size', versions: [{ tenant_id: 'ten_a', file_id: 'file_wrong_size', version: 1, event: 'File_create' }] },
      {
        environment: 'test',
        sha256: altered.sha256,
        reason: 'checksum',
        versions: [
          { tenant_id: 'ten_b', file_id: altered.id, version: 1, event: 'File_create' },
          { tenant_id: 'ten_b', file_id: altered.id, version: 2, event: 'File_update' },
        ],
      },
    ].sort((x, y) => x.sha256.localeCompare(y.sha256));
    assert.deepEqual(damaged, expected);
    assert.equal(
      result.damaged.some((d) => d.versions.some((v) => v.file_id === kept.id)),
      false,
      'the intact blob with its right size is not damaged',
    );
    assert.deepEqual(progress, [
      [1, 4],
      [2, 4],
      [3, 4],
      [4, 4],
    ]);
  });
});

describe('restoring a tenant as of a time', () => {
  it('plans the removals and restores that bring every file back to its state then, and carries them out removals first', async () => {
    const changed = await files.create(A, { name: 'changed.txt', content: 'then' });
    const deleted = await files.create(A, { name: 'deleted.txt', content: 'kept then' });
    const same = await files.create(A, { name: 'same.txt', content: 'same' });
    const gone = await files.create(A, { name: 'gone.txt', content: 'gone then' });
    await files.remove(A, gone.id);
    await deliver();
    const notBackedUp = await files.create(A, { name: 'not-backed-up.txt', content: 'never delivered' });
    files.take();
    const asOf = clock.now();
    await files.update(A, changed.id, { content: 'now' });
    await files.remove(A, deleted.id);
    const added = await files.create(A, { name: 'added.txt', content: 'new' });
    await backup.restore(A, gone.id, 1);
    await deliver();

    const plan = await backup.planAsOf(A, asOf);
    assert.deepEqual(plan.remove.map((file) => file.id).sort(), [added.id, gone.id].sort(), 'created since, or deleted then');
    assert.deepEqual(plan.restore.map((row) => [row.file_id, row.version, row.sha256]).sort(), [
      [changed.id, 1, sha256('then')],
      [deleted.id, 1, sha256('kept then')],
    ]);
    assert.equal(plan.unchanged, 1);
    assert.deepEqual(
      plan.notBackedUp.map((file) => file.id),
      [notBackedUp.id],
    );

    const steps: string[] = [];
    await backup.applyAsOf(A, plan, (done, total, what) => steps.push(`${done}/${total} ${what.split(' ')[0]}`));
    assert.deepEqual(steps, ['1/4 removed', '2/4 removed', '3/4 restored', '4/4 restored']);
    assert.deepEqual(files.removed.slice(0, 2), [gone.id, deleted.id], 'the removals before the restore');
    assert.deepEqual(files.removed.slice(2).sort(), [added.id, gone.id].sort());
    assert.equal((await files.get(A, changed.id)).sha256, sha256('then'));
    assert.equal((await files.get(A, deleted.id)).sha256, sha256('kept then'));
    assert.equal((await files.get(A, same.id)).version, 1, 'an unchanged file is left as it is');
    await rejectsWith(files.get(A, added.id), 404, 'not_found');
    await rejectsWith(files.get(A, gone.id), 404, 'not_found');
  });

  it('is for account keys and admins', async () => {
    await rejectsWith(backup.planAsOf(user('ten_a', 'usr_1'), clock.now()), 403, 'forbidden');
  });
});
