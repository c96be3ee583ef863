import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { newId } from '../../../core/ids.ts';
import type { TenantPrincipal } from '../../../core/principal.ts';
import type { FilesExportPort } from '../../../core/service-ports.ts';
import { writeZip } from './zip-writer.ts';

/**
 * The operator's export (`bantu export`): the same zip as a queued export, written to `out`
 * (through `<out>.part`, renamed once complete and synced, so a file at `out` is always whole).
 */
export async function exportToFile(
  files: FilesExportPort,
  principal: TenantPrincipal,
  options: { out: string; includeVersions: boolean; path?: string; maxBytes: number },
  onProgress: (done: number, total: number) => void,
): Promise<{ files: number; bytes: number }> {
  let total = 0;
  for (let after: string | undefined; ; ) {
    const page = await files.scan(principal, { after, limit: 1000, pathPrefix: options.path });
    total += page.length;
    const last = page[page.length - 1];
    if (page.length < 1000 || !last) break;
    after = last.id;
  }
  onProgress(0, total);
  const partial = `${options.out}.part`;
  const { zip, done, abort } = writeZip(
    files,
    {
      exportId: newId('exp'),
      createdAt: new Date().toISOString(),
      environment: principal.environment,
      principal,
      includeContent: true,
      includeVersions: options.includeVersions,
      path: options.path,
      maxBytes: options.maxBytes,
    },
    async (progress) => onProgress(progress.files_done, total),
  );
  try {
    const [, totals] = await Promise.all([pipeline(zip, fs.createWriteStream(partial, { mode: 0o600 })), done]);
    const handle = await fsp.open(partial, 'r');
    await handle.sync();
    await handle.close();
    await fsp.rename(partial, options.out);
    const folder = await fsp.open(path.dirname(path.resolve(options.out)), 'r');
    await folder.sync().catch(() => undefined);
    await folder.close();
    return totals;
  } catch (error) {
    abort(error instanceof Error ? error : new Error(String(error)));
    await fsp.rm(partial, { force: true });
    throw error;
  }
}
