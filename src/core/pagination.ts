import { type TSchema, Type } from '@sinclair/typebox';
import { AppError, Errors } from './errors.ts';

/**
 * Cursor pagination shared by every list: `?limit=` (1..200, default 50) and `?cursor=`,
 * answering `{data, next_cursor}`. A cursor is the opaque encoding of the last id seen.
 */
export const ListQuery = Type.Object(
  {
    limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 }),
    cursor: Type.Optional(Type.String({ maxLength: 200 })),
  },
  { additionalProperties: false },
);

export function Page<T extends TSchema>(item: T) {
  return Type.Object({ data: Type.Array(item), next_cursor: Type.Union([Type.String(), Type.Null()]) });
}

export function encodeCursor(lastId: string): string {
  return Buffer.from(lastId, 'utf8').toString('base64url');
}

export function decodeCursor(cursor: string | undefined): string | undefined {
  if (cursor === undefined) return undefined;
  const decoded = Buffer.from(cursor, 'base64url').toString('utf8');
  if (!/^[a-z0-9_]{1,100}$/.test(decoded)) {
    throw new AppError(Errors.validationFailed, 'The cursor is not one this server gave', { errors: [{ field: 'cursor', message: 'is invalid' }] });
  }
  return decoded;
}

/** Given `limit + 1` rows, returns the page and the cursor of the next one. */
export function pageOf<Row extends { id: string }, Out>(rows: Row[], limit: number, map: (row: Row) => Out): { data: Out[]; next_cursor: string | null } {
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  return { data: page.map(map), next_cursor: rows.length > limit && last ? encodeCursor(last.id) : null };
}
