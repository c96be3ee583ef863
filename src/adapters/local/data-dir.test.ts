import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { DataDirLockedError, lockDataDir } from './data-dir.ts';

const tempDir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'bantu-lock-'));

describe('lockDataDir', () => {
  it('lets exactly one of two starts racing for the same data dir win', async () => {
    const dir = tempDir();
    const outcomes = await Promise.allSettled([lockDataDir(dir), lockDataDir(dir), lockDataDir(path.join(dir, '.'))]);
    const won = outcomes.filter((o) => o.status === 'fulfilled');
    const lost = outcomes.filter((o) => o.status === 'rejected');
    assert.equal(won.length, 1);
    assert.equal(lost.length, 2);
    for (const o of lost) assert.ok((o as PromiseRejectedResult).reason instanceof DataDirLockedError);
    // A loser of the race may not see the winner's pid yet; a later start names it.
    assert.match(String((lost[0] as PromiseRejectedResult).reason.message), /Another Bantu( \(pid \d+\))? is already running/);
    await assert.rejects(lockDataDir(dir), new RegExp(`Another Bantu \\(pid ${process.pid}\\) is already running`));
    await (won[0] as PromiseFulfilledResult<() => Promise<void>>).value();
    assert.ok(!fs.existsSync(path.join(dir, 'bantu.lock')), 'released');
    const again = await lockDataDir(dir);
    await again();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('is not stopped by the lock file of a process that died, nor by a garbled one', async () => {
    const dir = tempDir();
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    fs.writeFileSync(path.join(dir, 'bantu.lock'), `${dead}\n`);
    const release = await lockDataDir(dir);
    assert.equal(fs.readFileSync(path.join(dir, 'bantu.lock'), 'utf8').trim(), String(process.pid));
    await release();
    fs.writeFileSync(path.join(dir, 'bantu.lock'), '');
    await (await lockDataDir(dir))();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('locks the same folder reached through a symbolic link', { skip: process.platform === 'linux' ? false : 'the abstract socket lock is Linux only' }, async () => {
    const dir = tempDir();
    const link = `${dir}-link`;
    fs.symlinkSync(dir, link);
    const release = await lockDataDir(dir);
    await assert.rejects(lockDataDir(link), DataDirLockedError);
    await release();
    fs.rmSync(link);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
