import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, it } from 'node:test';
import yauzl from 'yauzl';
import type { FileObject } from '../../../core/schemas.ts';
import type { FilesExportPort } from '../../../core/service-ports.ts';
import { writeZip } from './zip-writer.ts';

/**
 * The zip writer on its own, with files served from memory: past 65,535 entries a zip needs
 * its zip64 records (the classic end record counts entries in 16 bits). An independent reader
 * (yauzl) must then see every entry.
 */
describe('zip writer', () => {
  it('writes zip64 records past 65,535 entries, and every entry reads back', { timeout: 300_000 }, async () => {
    const COUNT = 65_600;
    const content = Buffer.from('x');
    const sha256 = createHash('sha256').update(content).digest('hex');
    const at = new Date('2026-12-01T00:00:00Z').toISOString();
    const fileAt = (n: number): FileObject => ({
      id: `file_${String(n).padStart(8, '0')}`,
      name: `f${n}.txt`,
      path: `/d${n % 10}`,
      size: 1,
      content_type: 'text/plain',
      sha256,
      version: 1,
      owner_id: null,
      created_at: at,
      updated_at: at,
    });
    const files: FilesExportPort = {
      async scan(_principal, query) {
        const start = query.after ? Number(query.after.slice(5)) + 1 : 0;
        const page: FileObject[] = [];
        for (let n = start; n < Math.min(COUNT, start + query.limit); n++) page.push(fileAt(n));
        return page;
      },
      versions: async () => new Map(),
      findBlobs: async (_principal, refs) => refs.map(() => ({ open: async () => Readable.from([content]) })),
    };
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bantu-zip64-')), 'export.zip');
    try {
      const { zip, done } = writeZip(
        files,
        {
          exportId: 'exp_zip64',
          createdAt: at,
          environment: 'test',
          principal: { kind: 'account_key', keyId: 'key_1', tenantId: 'ten_1', environment: 'test' },
          includeContent: true,
          includeVersions: false,
          maxBytes: 1 << 30,
        },
        async () => undefined,
      );
      await Promise.all([pipeline(zip, fs.createWriteStream(out)), done]);

      // The zip64 end of central directory record (signature 0x06064b50) is there.
      const bytes = fs.readFileSync(out);
      assert.ok(bytes.subarray(-200).includes(Buffer.from([0x50, 0x4b, 0x06, 0x06])), 'a zip64 end record');

      const names = await new Promise<string[]>((resolve, reject) => {
        yauzl.open(out, { lazyEntries: true }, (error, reader) => {
          if (error || !reader) return reject(error);
          const seen: string[] = [];
          reader.on('entry', (entry: yauzl.Entry) => {
            seen.push(entry.fileName);
            reader.readEntry();
          });
          reader.on('end', () => resolve(seen));
          reader.on('error', reject);
          reader.readEntry();
        });
      });
      assert.equal(names.length, COUNT + 1, 'every file and the manifest');
      assert.equal(new Set(names).size, names.length, 'no two entries alike');
      assert.ok(names.includes('manifest.json'));
      assert.ok(names.includes(`files/d9/f${COUNT - 1}.txt`));
    } finally {
      fs.rmSync(path.dirname(out), { recursive: true, force: true });
    }
  });
});
