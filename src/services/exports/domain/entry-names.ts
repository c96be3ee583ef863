/**
 * Zip entry names from stored names and folders, safe for any input: every segment is NFC,
 * free of control characters, of `/` and `\`, of characters Windows refuses (`<>:"|?*`), of
 * trailing dots and spaces, never empty, `.` or `..`, and at most 255 bytes. Names are unique
 * ignoring case (as on macOS and Windows), and no entry is also another entry's folder: a
 * collision gets a deterministic suffix, ` (2)`, ` (3)`, ... before the extension, in the
 * order names are asked for (the export asks in file id order).
 */
export const MAX_SEGMENT_BYTES = 255;

const UNSAFE = /[\p{Cc}\p{Cf}\u2028\u2029/\\<>:"|?*]/gu;

/** Cuts a string to at most `bytes` UTF-8 bytes without splitting a character. */
export function truncateUtf8(value: string, bytes: number): string {
  if (Buffer.byteLength(value, 'utf8') <= bytes) return value;
  let out = '';
  let used = 0;
  for (const char of value) {
    const size = Buffer.byteLength(char, 'utf8');
    if (used + size > bytes) break;
    out += char;
    used += size;
  }
  return out;
}

/** One safe path segment (never empty, `.` or `..`), at most `maxBytes`. */
export function safeSegment(raw: string, maxBytes = MAX_SEGMENT_BYTES): string {
  let value = raw.normalize('NFC').replace(UNSAFE, '_').replace(/[. ]+$/u, (tail) => '_'.repeat(tail.length));
  if (value === '' || /^\.+$/.test(value)) value = '_'.repeat(Math.max(1, value.length));
  return truncateUtf8(value, maxBytes);
}

/** `name (n).ext`, cut so that it still fits in a segment. */
function withSuffix(segment: string, n: number): string {
  const suffix = ` (${n})`;
  const dot = segment.lastIndexOf('.');
  const hasExtension = dot > 0 && segment.length - dot <= 16;
  const stem = hasExtension ? segment.slice(0, dot) : segment;
  const extension = hasExtension ? segment.slice(dot) : '';
  const room = MAX_SEGMENT_BYTES - Buffer.byteLength(suffix + extension, 'utf8');
  return `${truncateUtf8(stem, Math.max(1, room))}${suffix}${extension}`;
}

/**
 * Hands out unique entry names under one root (`files`, `versions`). Folders are mapped once:
 * every file of one stored folder lands in the same zip folder.
 */
export class EntryNamer {
  /** Lowercased names taken, and whether each is a folder or a file. */
  private readonly taken = new Map<string, 'dir' | 'file'>();
  /** Stored folder (its segments, joined by NUL) → its zip folder. */
  private readonly folders = new Map<string, string>();

  constructor(private readonly root: string) {
    this.taken.set(root.toLowerCase(), 'dir');
    this.folders.set('', root);
  }

  /** The zip folder for a stored folder (`/a/b`). */
  folder(storedPath: string): string {
    const segments = storedPath.split('/').filter((s) => s !== '');
    let key = '';
    let folder = this.root;
    for (const segment of segments) {
      key = `${key}\u0000${segment}`;
      const known = this.folders.get(key);
      if (known !== undefined) {
        folder = known;
        continue;
      }
      folder = this.claim(folder, safeSegment(segment), 'dir');
      this.folders.set(key, folder);
    }
    return folder;
  }

  /** A unique file entry for `name` in the stored folder `storedPath`. */
  file(storedPath: string, name: string): string {
    return this.claim(this.folder(storedPath), safeSegment(name), 'file');
  }

  /** A unique folder for `name` in the stored folder (a file's versions: `versions/<path>/<name>/`). */
  folderFor(storedPath: string, name: string): string {
    return this.claim(this.folder(storedPath), safeSegment(name), 'dir');
  }

  private claim(parent: string, segment: string, kind: 'dir' | 'file'): string {
    for (let n = 1; ; n++) {
      const candidate = `${parent}/${n === 1 ? segment : withSuffix(segment, n)}`;
      const key = candidate.toLowerCase();
      if (this.taken.has(key)) continue;
      this.taken.set(key, kind);
      return candidate;
    }
  }
}

/** Whether an entry name is a safe relative path (the property the namer keeps; for tests and a last check). */
export function isSafeEntryName(name: string): boolean {
  if (name === '' || name.startsWith('/') || name.includes('\\')) return false;
  // biome-ignore lint/suspicious/noControlCharactersInRegex: deliberate
  if (/[\u0000-\u001f\u007f]/.test(name)) return false;
  return name.split('/').every((s) => s !== '' && s !== '.' && s !== '..' && Buffer.byteLength(s, 'utf8') <= MAX_SEGMENT_BYTES);
}
