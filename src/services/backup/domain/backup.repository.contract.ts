import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BackupRepository, NewVersion, VersionRow } from './backup.repository.ts';

/**
 * The contract every BackupRepository driver passes: the PostgreSQL one (test/backup-repository.test.ts)
 * and the unit tests' in-memory fake (domain/fakes.test.ts), so that what the domain's unit
 * tests show on the fake holds on PostgreSQL. `open` gives a fresh, empty repository.
 */
export interface BackupRepositoryHarness {
  open(): Promise<{ repository: BackupRepository; close(): Promise<void> }>;
}

const A = 'ten_a';
const B = 'ten_b';
const SHA_A = 'a'.repeat(64);
const SHA_B = 'b'.repeat(64);
const SHA_C = 'c'.repeat(64);
const at = (iso: string) => new Date(iso);
const RECENT = () => new Date(Date.now() - 60_000);

let events = 0;
/** An entry to record; its event id is new unless given. */
function entry(fields: Partial<NewVersion> & Pick<NewVersion, 'file_id' | 'version'>): NewVersion {
  return {
    event: 'File_create',
    event_id: `evt_contract_${String(++events).padStart(6, '0')}`,
    owner_id: null,
    name: `${fields.file_id}.txt`,
    path: '/',
    size: 3,
    content_type: 'text/plain',
    sha256: SHA_A,
    created_at: at('2026-01-01T00:00:00Z'),
    occurred_at: at('2026-01-01T00:00:00Z'),
    ...fields,
  };
}

const keyOf = (row: Pick<VersionRow, 'file_id' | 'version' | 'event'>) => `${row.file_id} v${row.version} ${row.event}`;

export function backupRepositoryContract(driver: string, harness: BackupRepositoryHarness): void {
  describe(`BackupRepository contract: ${driver}`, () => {
    /** Runs `check` on a fresh repository and closes it, whatever happens. */
    const withRepository = (check: (repository: BackupRepository) => Promise<void>) => async () => {
      const { repository, close } = await harness.open();
      try {
        await check(repository);
      } finally {
        await close();
      }
    };

    it(
      'records an event once: a redelivered event id, or the same file, version and event, is left as it is',
      withRepository(async (repo) => {
        const first = entry({ file_id: 'f1', version: 1 });
        const second = entry({ file_id: 'f1', version: 2, event: 'File_update' });
        assert.deepEqual(await repo.inTenant('test', A, (tx) => tx.insertVersions([first, second])), new Set([first.event_id, second.event_id]));

        const sameSlot = entry({ file_id: 'f1', version: 1, name: 'other.txt' });
        const closing = entry({ file_id: 'f1', version: 2, event: 'File_delete' });
        const again = await repo.inTenant('test', A, (tx) => tx.insertVersions([first, sameSlot, closing, closing]));
        assert.deepEqual(again, new Set([closing.event_id]), 'only the new entry is recorded');

        const rows = await repo.inTenant('test', A, (tx) => tx.listVersions('f1', { limit: 10 }));
        assert.deepEqual(
          rows.map((row) => [keyOf(row), row.event_id, row.name, row.tenant_id]),
          [
            ['f1 v1 File_create', first.event_id, 'f1.txt', A],
            ['f1 v2 File_update', second.event_id, 'f1.txt', A],
            ['f1 v2 File_delete', closing.event_id, 'f1.txt', A],
          ],
        );
        for (const row of rows) assert.ok(row.backed_up_at instanceof Date && !Number.isNaN(row.backed_up_at.getTime()));

        // Event ids are unique across tenants; the same file, version and event of another tenant is another entry.
        const other = await repo.inTenant('test', B, (tx) => tx.insertVersions([first, { ...sameSlot, event_id: 'evt_contract_b' }]));
        assert.deepEqual(other, new Set(['evt_contract_b']));
        assert.equal(await repo.inTenant('test', A, (tx) => tx.insertVersions([])).then((ids) => ids.size), 0);
      }),
    );

    it(
      "a tenant's transaction sees and changes its own tenant's history and policy only",
      withRepository(async (repo) => {
        await repo.inTenant('test', A, async (tx) => {
          await tx.insertVersions([entry({ file_id: 'f1', version: 1, owner_id: 'usr_1' }), entry({ file_id: 'f1', version: 2, event: 'File_update' })]);
          await tx.setPolicy({ keep_last: 1, keep_days: null });
        });
        const seen = await repo.inTenant('test', B, async (tx) => ({
          owner: await tx.ownerOf('f1'),
          list: await tx.listVersions('f1', { limit: 10 }),
          found: await tx.findVersion('f1', 1),
          latest: await tx.latestContentVersion('f1'),
          state: await tx.stateAsOf(at('2100-01-01T00:00:00Z')),
          stats: await tx.stats(),
          policy: await tx.getPolicy(),
          removed: await tx.applyRetention({ keep_last: 1, keep_days: null }),
        }));
        assert.deepEqual(seen, { owner: undefined, list: [], found: null, latest: null, state: [], stats: { versions: 0, bytes: 0, last_backup_at: null }, policy: null, removed: 0 });
        assert.equal((await repo.inTenant('test', A, (tx) => tx.stats())).versions, 2, "tenant A's history is untouched");
        // Environments are apart too.
        assert.deepEqual(await repo.inTenant('live', A, (tx) => tx.listVersions('f1', { limit: 10 })), []);
        assert.deepEqual(await repo.environmentStats('live'), { versions: 0, bytes: 0 });
      }),
    );

    it(
      'lists a history by version, a delete after the content entry it closed, from a position and up to a limit',
      withRepository(async (repo) => {
        await repo.inTenant('test', A, (tx) =>
          tx.insertVersions([
            entry({ file_id: 'f1', version: 3 }),
            entry({ file_id: 'f1', version: 2, event: 'File_delete' }),
            entry({ file_id: 'f1', version: 1 }),
            entry({ file_id: 'f2', version: 1 }),
            entry({ file_id: 'f1', version: 2, event: 'File_update' }),
          ]),
        );
        const page = async (after: { version: number; rank: number } | undefined, limit: number) =>
          (await repo.inTenant('test', A, (tx) => tx.listVersions('f1', { after, limit }))).map((row) => [row.version, row.rank, row.event]);
        assert.deepEqual(await page(undefined, 10), [
          [1, 0, 'File_create'],
          [2, 0, 'File_update'],
          [2, 1, 'File_delete'],
          [3, 0, 'File_create'],
        ]);
        assert.deepEqual(await page(undefined, 2), [
          [1, 0, 'File_create'],
          [2, 0, 'File_update'],
        ]);
        assert.deepEqual(await page({ version: 2, rank: 0 }, 1), [[2, 1, 'File_delete']]);
        assert.deepEqual(await page({ version: 2, rank: 1 }, 10), [[3, 0, 'File_create']]);
        assert.deepEqual(await page({ version: 3, rank: 0 }, 10), []);
      }),
    );

    it(
      "finds a version's content entry, the newest content version, and the owner of the newest entry",
      withRepository(async (repo) => {
        await repo.inTenant('test', A, (tx) =>
          tx.insertVersions([
            entry({ file_id: 'f1', version: 1, owner_id: 'usr_1', sha256: SHA_A }),
            entry({ file_id: 'f1', version: 2, event: 'File_update', owner_id: 'usr_2', sha256: SHA_B }),
            entry({ file_id: 'f1', version: 2, event: 'File_delete', owner_id: 'usr_3', sha256: SHA_B }),
            entry({ file_id: 'f2', version: 1, owner_id: null }),
          ]),
        );
        await repo.inTenant('test', A, async (tx) => {
          assert.equal((await tx.findVersion('f1', 2))?.event, 'File_update', 'the content entry, not the delete');
          assert.equal((await tx.findVersion('f1', 1))?.sha256, SHA_A);
          assert.equal(await tx.findVersion('f1', 3), null);
          assert.equal(await tx.findVersion('nope', 1), null);
          const latest = await tx.latestContentVersion('f1');
          assert.deepEqual([latest?.version, latest?.event], [2, 'File_update']);
          assert.deepEqual(await tx.ownerOf('f1'), { owner_id: 'usr_3' }, 'the newest entry is the delete');
          assert.deepEqual(await tx.ownerOf('f2'), { owner_id: null });
          assert.equal(await tx.ownerOf('nope'), undefined);
        });
      }),
    );

    it(
      "gives each file's last entry at or before a time, by file id",
      withRepository(async (repo) => {
        await repo.inTenant('test', A, (tx) =>
          tx.insertVersions([
            entry({ file_id: 'f2', version: 1, occurred_at: at('2026-01-02T00:00:00Z') }),
            entry({ file_id: 'f1', version: 1, occurred_at: at('2026-01-01T00:00:00Z') }),
            entry({ file_id: 'f1', version: 2, event: 'File_update', occurred_at: at('2026-01-03T00:00:00Z') }),
            entry({ file_id: 'f2', version: 1, event: 'File_delete', occurred_at: at('2026-01-04T00:00:00Z') }),
            entry({ file_id: 'f3', version: 1, occurred_at: at('2026-01-05T00:00:00Z') }),
          ]),
        );
        const state = async (iso: string) => (await repo.inTenant('test', A, (tx) => tx.stateAsOf(at(iso)))).map(keyOf);
        assert.deepEqual(await state('2025-12-31T00:00:00Z'), []);
        assert.deepEqual(await state('2026-01-03T12:00:00Z'), ['f1 v2 File_update', 'f2 v1 File_create']);
        assert.deepEqual(await state('2026-01-04T00:00:00Z'), ['f1 v2 File_update', 'f2 v1 File_delete'], 'at the time itself counts');
        assert.deepEqual(await state('2026-02-01T00:00:00Z'), ['f1 v2 File_update', 'f2 v1 File_delete', 'f3 v1 File_create']);
      }),
    );

    it(
      'counts entries and distinct bytes per tenant and across tenants; the last backup is the newest entry',
      withRepository(async (repo) => {
        await repo.inTenant('test', A, (tx) =>
          tx.insertVersions([
            entry({ file_id: 'f1', version: 1, sha256: SHA_A, size: 10 }),
            entry({ file_id: 'f2', version: 1, sha256: SHA_A, size: 10 }),
            entry({ file_id: 'f1', version: 2, event: 'File_update', sha256: SHA_B, size: 5 }),
          ]),
        );
        await repo.inTenant('test', B, (tx) => tx.insertVersions([entry({ file_id: 'f9', version: 1, sha256: SHA_C, size: 7 })]));
        const stats = await repo.inTenant('test', A, (tx) => tx.stats());
        const rows = [
          ...(await repo.inTenant('test', A, (tx) => tx.listVersions('f1', { limit: 10 }))),
          ...(await repo.inTenant('test', A, (tx) => tx.listVersions('f2', { limit: 10 }))),
        ];
        const newest = Math.max(...rows.map((row) => row.backed_up_at.getTime()));
        assert.deepEqual({ ...stats, last_backup_at: stats.last_backup_at?.getTime() }, { versions: 3, bytes: 15, last_backup_at: newest });
        assert.deepEqual(await repo.environmentStats('test'), { versions: 4, bytes: 22 });
      }),
    );

    it(
      'keeps one policy per tenant, refuses rules the table refuses, and lists the policies that are not keep all',
      withRepository(async (repo) => {
        await repo.inTenant('test', A, (tx) => tx.setPolicy({ keep_last: 3, keep_days: null }));
        assert.deepEqual(await repo.inTenant('test', A, (tx) => tx.getPolicy()), { tenant_id: A, keep_last: 3, keep_days: null });
        await repo.inTenant('test', A, (tx) => tx.setPolicy({ keep_last: null, keep_days: 7 }));
        assert.deepEqual(await repo.inTenant('test', A, (tx) => tx.getPolicy()), { tenant_id: A, keep_last: null, keep_days: 7 });
        await repo.inTenant('test', B, (tx) => tx.setPolicy({ keep_last: 2, keep_days: null }));
        await repo.inTenant('test', 'ten_c', (tx) => tx.setPolicy({ keep_last: null, keep_days: null }));
        const policies = (await repo.policies('test')).sort((x, y) => x.tenant_id.localeCompare(y.tenant_id));
        assert.deepEqual(policies, [
          { tenant_id: A, keep_last: null, keep_days: 7 },
          { tenant_id: B, keep_last: 2, keep_days: null },
        ]);
        assert.deepEqual(await repo.policies('live'), []);
        for (const bad of [
          { keep_last: 0, keep_days: null },
          { keep_last: null, keep_days: 0 },
          { keep_last: 1, keep_days: 1 },
        ]) {
          await assert.rejects(repo.inTenant('test', A, (tx) => tx.setPolicy(bad)), /check constraint/, JSON.stringify(bad));
        }
        assert.deepEqual(await repo.inTenant('test', A, (tx) => tx.getPolicy()), { tenant_id: A, keep_last: null, keep_days: 7 });
      }),
    );

    it(
      "keep_last N removes all but each file's N newest versions",
      withRepository(async (repo) => {
        await repo.inTenant('test', A, (tx) =>
          tx.insertVersions([
            entry({ file_id: 'f1', version: 1 }),
            entry({ file_id: 'f1', version: 2, event: 'File_update' }),
            entry({ file_id: 'f1', version: 3, event: 'File_update' }),
            entry({ file_id: 'f1', version: 4, event: 'File_update' }),
            entry({ file_id: 'f1', version: 4, event: 'File_delete' }),
            entry({ file_id: 'f2', version: 1 }),
          ]),
        );
        await repo.inTenant('test', B, (tx) => tx.insertVersions([entry({ file_id: 'f1', version: 1 }), entry({ file_id: 'f1', version: 2, event: 'File_update' })]));
        assert.equal(await repo.inTenant('test', A, (tx) => tx.applyRetention({ keep_last: 2, keep_days: null })), 2);
        const left = async (tenant: string, file: string) => (await repo.inTenant('test', tenant, (tx) => tx.listVersions(file, { limit: 10 }))).map(keyOf);
        assert.deepEqual(await left(A, 'f1'), ['f1 v3 File_update', 'f1 v4 File_update', 'f1 v4 File_delete']);
        assert.deepEqual(await left(A, 'f2'), ['f2 v1 File_create']);
        assert.equal((await left(B, 'f1')).length, 2, "another tenant's history is not touched");
        assert.equal(await repo.inTenant('test', A, (tx) => tx.applyRetention({ keep_last: 1, keep_days: null })), 1);
        assert.deepEqual(await left(A, 'f1'), ['f1 v4 File_update', 'f1 v4 File_delete'], "a deleted file's last version stays whole");
        assert.equal(await repo.inTenant('test', A, (tx) => tx.applyRetention({ keep_last: null, keep_days: null })), 0, 'keep all removes nothing');
      }),
    );

    it(
      "keep_days D removes entries made before D days ago, never a file's newest version",
      withRepository(async (repo) => {
        await repo.inTenant('test', A, (tx) =>
          tx.insertVersions([
            entry({ file_id: 'f1', version: 1, created_at: at('2000-01-01T00:00:00Z') }),
            entry({ file_id: 'f1', version: 2, event: 'File_update', created_at: at('2000-01-02T00:00:00Z') }),
            entry({ file_id: 'f1', version: 3, event: 'File_update', created_at: RECENT() }),
            entry({ file_id: 'f2', version: 1, created_at: at('2000-01-01T00:00:00Z') }),
            entry({ file_id: 'f3', version: 1, created_at: at('2000-01-01T00:00:00Z') }),
            entry({ file_id: 'f3', version: 1, event: 'File_delete', created_at: at('2000-01-01T00:00:00Z') }),
          ]),
        );
        assert.equal(await repo.inTenant('test', A, (tx) => tx.applyRetention({ keep_last: null, keep_days: 30 })), 2);
        const left = async (file: string) => (await repo.inTenant('test', A, (tx) => tx.listVersions(file, { limit: 10 }))).map(keyOf);
        assert.deepEqual(await left('f1'), ['f1 v3 File_update']);
        assert.deepEqual(await left('f2'), ['f2 v1 File_create'], 'an old single version is the newest one');
        assert.deepEqual(await left('f3'), ['f3 v1 File_create', 'f3 v1 File_delete']);
      }),
    );

    it(
      'a transaction whose work throws leaves nothing behind',
      withRepository(async (repo) => {
        await assert.rejects(
          repo.inTenant('test', A, async (tx) => {
            await tx.insertVersions([entry({ file_id: 'f1', version: 1 })]);
            await tx.setPolicy({ keep_last: 1, keep_days: null });
            throw new Error('the work failed');
          }),
          /the work failed/,
        );
        assert.deepEqual(await repo.inTenant('test', A, (tx) => tx.stats()), { versions: 0, bytes: 0, last_backup_at: null });
        assert.equal(await repo.inTenant('test', A, (tx) => tx.getPolicy()), null);
        assert.deepEqual(await repo.policies('test'), []);
        await repo.inTenant('test', A, (tx) => tx.insertVersions([entry({ file_id: 'f1', version: 1 })]));
        await assert.rejects(
          repo.inTenant('test', A, async (tx) => {
            await tx.applyRetention({ keep_last: 1, keep_days: null });
            await tx.insertVersions([entry({ file_id: 'f1', version: 2, event: 'File_update' })]);
            throw new Error('again');
          }),
          /again/,
        );
        assert.equal((await repo.inTenant('test', A, (tx) => tx.stats())).versions, 1);
      }),
    );

    it(
      'across tenants: which blobs are in use, and every blob with the entries that use it',
      withRepository(async (repo) => {
        await repo.inTenant('test', B, (tx) => tx.insertVersions([entry({ file_id: 'f9', version: 1, sha256: SHA_A, size: 3 })]));
        await repo.inTenant('test', A, async (tx) => {
          await tx.lockBlobs([SHA_B, SHA_A, SHA_A]);
          await tx.lockBlobs([]);
          await tx.insertVersions([
            entry({ file_id: 'f2', version: 1, sha256: SHA_B, size: 2 }),
            entry({ file_id: 'f1', version: 2, event: 'File_update', sha256: SHA_A, size: 3 }),
            entry({ file_id: 'f1', version: 1, sha256: SHA_A, size: 3 }),
          ]);
        });
        assert.equal(await repo.blobInUse('test', SHA_A), true);
        assert.equal(await repo.blobInUse('test', SHA_C), false);
        assert.equal(await repo.blobInUse('live', SHA_A), false);
        const inTx = await repo.acrossTenants('test', async (tx) => {
          await tx.lockBlob(SHA_C);
          return [await tx.blobInUse(SHA_A), await tx.blobInUse(SHA_B), await tx.blobInUse(SHA_C)];
        });
        assert.deepEqual(inTx, [true, true, false]);
        assert.deepEqual(await repo.blobsWithVersions('test'), [
          {
            sha256: SHA_A,
            size: 3,
            versions: [
              { tenant_id: A, file_id: 'f1', version: 1, event: 'File_create' },
              { tenant_id: A, file_id: 'f1', version: 2, event: 'File_update' },
              { tenant_id: B, file_id: 'f9', version: 1, event: 'File_create' },
            ],
          },
          { sha256: SHA_B, size: 2, versions: [{ tenant_id: A, file_id: 'f2', version: 1, event: 'File_create' }] },
        ]);
        assert.deepEqual(await repo.blobsWithVersions('live'), []);
      }),
    );
  });
}
