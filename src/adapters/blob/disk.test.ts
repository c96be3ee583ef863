import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import type { BlobStore } from '../../core/ports.ts';
import { blobStoreContract } from './blob-store.contract.ts';
import { DiskBlobStore } from './disk.ts';

const roots: string[] = [];
after(async () => {
  for (const root of roots) await fs.rm(root, { recursive: true, force: true });
});

async function freshRoot(): Promise<string> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'bantu-blobs-'));
  roots.push(root);
  return root;
}

blobStoreContract('disk', {
  make: async () => DiskBlobStore.open(await freshRoot()),
  inFlight: async (store: BlobStore) => (await fs.readdir(path.join((store as DiskBlobStore).root, 'tmp'))).length,
});

describe('DiskBlobStore', () => {
  it('removes temp files of dead writers at open, and keeps those of live ones', async () => {
    const root = await freshRoot();
    await DiskBlobStore.open(root);
    // A pid that cannot be alive (above the kernel's pid_max), and our own parent, which is.
    await fs.writeFile(path.join(root, 'tmp', '999999999-deadbeef'), 'half an upload');
    await fs.writeFile(path.join(root, 'tmp', `${process.ppid}-cafe`), 'in flight elsewhere');
    await DiskBlobStore.open(root);
    assert.deepEqual(await fs.readdir(path.join(root, 'tmp')), [`${process.ppid}-cafe`]);
  });

  it('refuses keys that are not sha256 hex, so no path can escape the root', async () => {
    const store = await DiskBlobStore.open(await freshRoot());
    await assert.rejects(store.get('../../etc/passwd'), (error: NodeJS.ErrnoException) => error.code === 'ENOENT');
    assert.equal(await store.stat('../x'), null);
  });
});
