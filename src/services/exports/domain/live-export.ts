import { Readable } from 'node:stream';
import type { TenantPrincipal } from '../../../core/principal.ts';
import type { FilesExportPort } from '../../../core/service-ports.ts';

/** `json`: one JSON array; `ndjson`: one File object per line. */
export type LiveFormat = 'json' | 'ndjson';

/** Files read per page of the keyset cursor: what the live export holds at once. */
export const LIVE_PAGE_SIZE = 500;

/**
 * The caller's visible File objects now, as a byte stream that reads the files one page at a
 * time and only as fast as it is consumed (backpressure: a stream in bytes, whose small buffer
 * pulls the next page only once the previous one has gone out), so memory stays flat for any
 * number of files. The first page is read before this resolves: a bad `path` fails here,
 * before a response has started.
 */
export async function openLiveExport(
  files: FilesExportPort,
  principal: TenantPrincipal,
  options: { format: LiveFormat; path?: string; pageSize?: number },
): Promise<Readable> {
  const limit = options.pageSize ?? LIVE_PAGE_SIZE;
  const scan = (after?: string) => files.scan(principal, { limit, after, pathPrefix: options.path });
  const first = await scan();
  const json = options.format === 'json';
  async function* chunks(): AsyncGenerator<Buffer> {
    if (json) yield Buffer.from('[');
    let page = first;
    let written = 0;
    while (page.length > 0) {
      let text = '';
      for (const file of page) {
        text += json ? `${written++ === 0 ? '' : ','}\n${JSON.stringify(file)}` : `${JSON.stringify(file)}\n`;
      }
      yield Buffer.from(text);
      const last = page[page.length - 1];
      if (page.length < limit || !last) break;
      page = await scan(last.id);
    }
    if (json) yield Buffer.from(written === 0 ? ']' : '\n]');
  }
  // Bytes, not objects: in object mode the buffer would hold 16 pages, not one.
  return Readable.from(chunks(), { objectMode: false, highWaterMark: 16 * 1024 });
}
