import { AppError, Errors } from '../../../core/errors.ts';

/**
 * File names and folder paths. Both are stored in Unicode NFC, so the same name typed on
 * macOS (NFD) and on Windows (NFC) is one file, not two that look identical.
 */
export const MAX_NAME_BYTES = 255;
export const MAX_PATH_BYTES = 1024;

// C0 controls (NUL included), DEL and C1 controls (U+0000-001F, U+007F-009F, Unicode's Cc):
// invisible, and unsafe in headers and shells.
const CONTROL = /\p{Cc}/u;

function invalid(field: string, message: string): AppError {
  return new AppError(Errors.validationFailed, `${field} ${message}`, { errors: [{ field, message }] });
}

/** Why `name` is not a valid file name, or null when it is. */
function nameProblem(name: string): string | null {
  if (name.length === 0) return 'must not be empty';
  if (Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) return `must be at most ${MAX_NAME_BYTES} bytes`;
  if (name.includes('/') || name.includes('\\')) return 'must not contain / or \\';
  if (CONTROL.test(name)) return 'must not contain NUL or control characters';
  if (name === '.' || name === '..') return 'must not be . or ..';
  return null;
}

export function validateName(raw: string, field = 'name'): string {
  const name = raw.normalize('NFC');
  const problem = nameProblem(name);
  if (problem) throw invalid(field, problem);
  return name;
}

/**
 * A folder path: `/`, or `/a/b` with no empty, `.` or `..` segment. Normalised first:
 * a missing leading `/` is added, `//` collapses, a trailing `/` goes. Undefined or empty is `/`.
 */
export function normalizePath(raw: string | undefined, field = 'path'): string {
  if (raw === undefined || raw === '') return '/';
  const value = raw.normalize('NFC');
  if (Buffer.byteLength(value, 'utf8') > MAX_PATH_BYTES) throw invalid(field, `must be at most ${MAX_PATH_BYTES} bytes`);
  if (value.includes('\\')) throw invalid(field, 'must use / between folders, not \\');
  if (CONTROL.test(value)) throw invalid(field, 'must not contain NUL or control characters');
  const segments = value.split('/').filter((segment) => segment !== '');
  for (const segment of segments) {
    if (segment === '..' || segment === '.') throw invalid(field, 'must not contain . or .. segments');
    if (Buffer.byteLength(segment, 'utf8') > MAX_NAME_BYTES) throw invalid(field, `folder names must be at most ${MAX_NAME_BYTES} bytes`);
  }
  return `/${segments.join('/')}`;
}

/** Content types are echoed in a response header: keep only a well-formed `type/subtype; params`. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: deliberate, a quoted parameter value must not carry C0 controls into the header
const MEDIA_TYPE = /^[a-z0-9!#$&^_.+-]{1,127}\/[a-z0-9!#$&^_.+-]{1,127}(\s*;\s*[a-z0-9!#$&^_.+-]+=("[^"\u0000-\u001f\\]*"|[a-z0-9!#$&^_.+-]+))*$/i;

export function normalizeContentType(raw: string | undefined): string {
  const value = raw?.trim();
  if (!value || value.length > 255 || !MEDIA_TYPE.test(value)) return 'application/octet-stream';
  return value;
}
