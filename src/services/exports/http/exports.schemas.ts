import { Type } from '@sinclair/typebox';
import { FileObject } from '../../../core/schemas.ts';

export const LiveExportQuery = Type.Object(
  {
    path: Type.Optional(Type.String({ maxLength: 2048, description: 'Only files in this folder and its subfolders (`/reports` matches `/reports` and `/reports/2026`)' })),
  },
  { additionalProperties: false },
);

export const LiveExportHeaders = Type.Object({
  accept: Type.Optional(Type.String({ description: '`application/x-ndjson` for one File object per line; anything else gets a JSON array' })),
});

/** What the live export streams (as JSON; NDJSON carries the same objects one per line). */
export const LiveExportResponse = Type.Array(FileObject, { description: 'Streamed, in ascending id order (oldest first)' });
