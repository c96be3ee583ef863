import { createHash } from 'node:crypto';
import { type PassThrough, Readable, Transform } from 'node:stream';
import { ZipFile } from 'yazl';
import { AppError } from '../../../core/errors.ts';
import type { Environment, TenantPrincipal } from '../../../core/principal.ts';
import type { FileObject } from '../../../core/schemas.ts';
import type { BlobRef, FilesExportPort, FileVersionRecord, FoundBlob } from '../../../core/service-ports.ts';
import { EntryNamer } from './entry-names.ts';

/** What one zip export holds and for whom. */
export interface ZipPlan {
  exportId: string;
  createdAt: string;
  environment: Environment;
  principal: TenantPrincipal;
  includeContent: boolean;
  includeVersions: boolean;
  path?: string;
  /** The most content bytes the zip may hold; past it the export fails. */
  maxBytes: number;
}

/** The run was stopped with its process: the export stays queued for the next worker. */
export class ExportStopped extends Error {
  constructor() {
    super('the exports worker stopped');
    this.name = 'ExportStopped';
  }
}

/** An export that cannot complete as asked; its message is the export's `error`. */
export class ExportFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ExportFailure';
  }
}

// Files per page, and per progress update.
const PAGE = 50;
/** Entries opened ahead of the one being written: a few file handles, not the whole export. */
const WINDOW = 8;

/** A recorded version as the manifest lists it: with the zip entry that holds its bytes. */
export interface ManifestVersion extends FileVersionRecord {
  entry: string;
}

/**
 * Streams the zip of an export: each file at `files/<path>/<name>` (every version at
 * `versions/<path>/<name>/v<N>` when asked), then `manifest.json`. Entries are stored as they
 * are (documents are mostly compressed already; zip64 when large, by yazl) and each is hashed
 * as it is written: bytes that are not their recorded sha256 fail the whole zip, which then
 * never becomes an export. Files are read one page at a time, their blobs found for the whole
 * page at once; a few entries are opened ahead.
 *
 * `zip` is the archive's bytes; `done` resolves with the totals once the last entry has been
 * written (and rejects, like `zip`, on any failure). `onProgress` hears the files and bytes
 * written so far after each page (the next page is read meanwhile) and once all are written. A file deleted while the export runs is
 * left out.
 */
export function writeZip(
  files: FilesExportPort,
  plan: ZipPlan,
  onProgress: (progress: { files_done: number; bytes: number }) => Promise<void>,
): { zip: Readable; done: Promise<{ files: number; bytes: number }>; abort: (reason: Error) => void } {
  const zipFile = new ZipFile();
  const output = zipFile.outputStream as PassThrough;
  let failure: Error | undefined;
  // Entries handed to yazl and not yet written: a failure ends them too, or their waiters would hang.
  const active = new Set<Transform>();
  const fail = (error: Error) => {
    if (failure) return;
    failure = error;
    output.destroy(error);
    for (const entry of active) entry.destroy(error);
  };
  zipFile.on('error', fail);

  const fileNames = new EntryNamer('files');
  const versionNames = new EntryNamer('versions');
  const manifest: string[] = [];
  const pending: Promise<void>[] = [];
  // Handed to yazl (what the limit counts), and written out (what progress reports).
  let bytes = 0;
  const written = { files_done: 0, bytes: 0 };

  /** Adds one entry from an opened blob, checked against its sha256 and size as yazl reads it. */
  const addEntry = (name: string, source: AsyncIterable<Uint8Array>, expected: { sha256: string; size: number; mtime: Date }) => {
    bytes += expected.size;
    if (bytes > plan.maxBytes) throw new ExportFailure(`the export holds more than ${plan.maxBytes} bytes, the limit of this installation; export a folder (path) at a time`);
    const hash = createHash('sha256');
    let seen = 0;
    const checked = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        hash.update(chunk);
        seen += chunk.length;
        callback(null, chunk);
      },
      flush(callback) {
        const sha256 = hash.digest('hex');
        if (sha256 !== expected.sha256 || seen !== expected.size) {
          callback(new ExportFailure(`${name}: the stored bytes (${seen} bytes, sha256 ${sha256}) are not the recorded ${expected.size} bytes ${expected.sha256}`));
        } else callback();
      },
    });
    // A store's stream is piped as it is; any other iterable of bytes is made one.
    const readable = source instanceof Readable ? source : Readable.from(source, { objectMode: false });
    readable.on('error', (error) => fail(error));
    checked.on('error', (error) => fail(error));
    active.add(checked);
    const written = new Promise<void>((resolve, reject) => {
      checked.on('end', resolve);
      checked.on('error', reject);
    }).finally(() => active.delete(checked));
    // Rejections are collected through `pending`; this one must not go unhandled meanwhile.
    written.catch(() => undefined);
    readable.pipe(checked);
    zipFile.addReadStream(checked, name, { size: expected.size, mtime: expected.mtime, compress: false });
    return written;
  };

  /** Opens a found blob, or null when its file was deleted meanwhile (it is left out). */
  const open = async (blob: FoundBlob) => {
    try {
      return await blob.open();
    } catch (error) {
      if (error instanceof AppError && error.code === 'not_found') return null;
      throw error;
    }
  };

  const throttle = async (written: Promise<void>) => {
    pending.push(written);
    if (pending.length >= WINDOW) await pending.shift();
  };

  /** The blobs one file's entries are read from, found for its page; null when the file was deleted meanwhile. */
  type Found = { versions: Array<{ record: FileVersionRecord; blob: FoundBlob }>; content: FoundBlob | null };
  /** What one file's entries are read from, opened ahead of their turn; null when the file was deleted meanwhile. */
  type Opened = { versions: Array<{ record: FileVersionRecord; source: AsyncIterable<Uint8Array> }>; content: AsyncIterable<Uint8Array> | null };

  /** The blobs of a whole page in two look-ups (its files' versions when asked, then their blobs), not a few per file. */
  const findPage = async (page: FileObject[]): Promise<Array<Found | null>> => {
    const recorded = plan.includeVersions ? await files.versions(plan.principal, page.map((file) => file.id)) : undefined;
    const refs: BlobRef[] = [];
    for (const file of page) {
      for (const record of recorded?.get(file.id) ?? []) refs.push({ fileId: file.id, sha256: record.sha256 });
      if (plan.includeContent) refs.push({ fileId: file.id, sha256: file.sha256 });
    }
    const blobs = await files.findBlobs(plan.principal, refs);
    let at = 0;
    return page.map((file) => {
      const found: Found = { versions: [], content: null };
      // A file gone since the scan has no versions, or blobs no longer found: all of it is left out.
      let whole = !recorded || recorded.has(file.id);
      for (const record of recorded?.get(file.id) ?? []) {
        const blob = blobs[at++];
        if (blob) found.versions.push({ record, blob });
        else whole = false;
      }
      if (plan.includeContent) {
        found.content = blobs[at++] ?? null;
        if (!found.content) whole = false;
      }
      return whole ? found : null;
    });
  };

  const release = (opened: Opened | null) => {
    for (const source of [...(opened?.versions.map((v) => v.source) ?? []), opened?.content]) (source as { destroy?: () => void } | null | undefined)?.destroy?.();
  };
  const openFile = async (found: Found | null): Promise<Opened | null> => {
    if (!found) return null;
    const opened: Opened = { versions: [], content: null };
    try {
      for (const { record, blob } of found.versions) {
        const source = await open(blob);
        if (!source) {
          release(opened);
          return null;
        }
        opened.versions.push({ record, source });
      }
      if (found.content) {
        opened.content = await open(found.content);
        if (!opened.content) {
          release(opened);
          return null;
        }
      }
      return opened;
    } catch (error) {
      release(opened);
      throw error;
    }
  };

  /** Hands a file's opened entries to the zip (all of them or, for a file gone meanwhile, none) and records it in the manifest. */
  const addFile = async (file: FileObject, opened: Opened): Promise<void> => {
    const versions: ManifestVersion[] = [];
    let lastEntry: Promise<void> = Promise.resolve();
    let size = 0;
    if (plan.includeVersions) {
      const folder = versionNames.folderFor(file.path, file.name);
      for (const { record, source } of opened.versions) {
        const name = `${folder}/v${record.version}`;
        lastEntry = addEntry(name, source, { sha256: record.sha256, size: record.size, mtime: new Date(record.created_at) });
        size += record.size;
        await throttle(lastEntry);
        versions.push({ ...record, entry: name });
      }
    }
    let entry: string | null = null;
    if (opened.content) {
      entry = fileNames.file(file.path, file.name);
      lastEntry = addEntry(entry, opened.content, { sha256: file.sha256, size: file.size, mtime: new Date(file.updated_at) });
      size += file.size;
      await throttle(lastEntry);
    }
    // The file is written once its last entry is (yazl writes them in order); `done` reports a failure.
    lastEntry.then(() => {
      written.files_done++;
      written.bytes += size;
    }, () => undefined);
    const { owner_id: _owner, ...described } = file;
    manifest.push(JSON.stringify({ ...described, entry, ...(plan.includeVersions ? { versions } : {}) }));
  };

  /** One page: each file opened up to WINDOW files ahead, then handed to the zip in order. */
  const addPage = async (page: FileObject[], found: Array<Found | null>): Promise<number> => {
    const ahead: Array<Promise<Opened | null>> = [];
    const openAt = (i: number) => {
      if (i >= page.length) return;
      const opening = openFile(found[i] ?? null);
      opening.catch(() => undefined);
      ahead[i] = opening;
    };
    for (let i = 0; i < WINDOW; i++) openAt(i);
    let added = 0;
    let handed = -1;
    try {
      for (let i = 0; i < page.length; i++) {
        if (failure) throw failure;
        const opened = await ahead[i];
        handed = i;
        openAt(i + WINDOW);
        if (!opened) continue;
        await addFile(page[i] as FileObject, opened);
        added++;
      }
    } finally {
      // Opened ahead and never handed over (a failure): closed now rather than when collected.
      for (let j = handed + 1; j < ahead.length; j++) void ahead[j]?.then(release, () => undefined);
    }
    return added;
  };

  /** A page of the scan and its blobs, read while the page before is being written. */
  const readPage = async (after: string | undefined) => {
    const page = await files.scan(plan.principal, { after, limit: PAGE, pathPrefix: plan.path });
    return { page, found: await findPage(page) };
  };

  const done = (async () => {
    let count = 0;
    let next = readPage(undefined);
    for (;;) {
      const { page, found } = await next;
      const last = page[page.length - 1];
      const more = page.length === PAGE && last !== undefined;
      if (more) {
        next = readPage(last.id);
        // Awaited on the next turn; a failure meanwhile must not go unhandled.
        next.catch(() => undefined);
      }
      count += await addPage(page, found);
      if (failure) throw failure;
      if (!more) break;
      await onProgress({ ...written });
    }
    await Promise.all(pending.splice(0));
    if (failure) throw failure;
    await onProgress({ ...written });
    const head = JSON.stringify({ export_id: plan.exportId, created_at: plan.createdAt, environment: plan.environment });
    zipFile.addBuffer(Buffer.from(`${head.slice(0, -1)},"files":[\n${manifest.join(',\n')}\n]}\n`), 'manifest.json', { mtime: new Date(plan.createdAt) });
    zipFile.end();
    return { files: count, bytes };
  })();
  done.catch((error) => fail(error instanceof Error ? error : new Error(String(error))));
  return { zip: output, done, abort: fail };
}
