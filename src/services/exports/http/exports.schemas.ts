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

export const CreateExportBody = Type.Object(
  {
    include_content: Type.Optional(Type.Boolean({ default: true, description: "The files' current bytes, at `files/<path>/<name>`" })),
    include_versions: Type.Optional(Type.Boolean({ default: false, description: 'Every recorded version too, at `versions/<path>/<name>/v<N>`' })),
    path: Type.Optional(Type.String({ maxLength: 2048, description: 'Only this folder and its subfolders' })),
    email: Type.Optional(Type.String({ format: 'email', maxLength: 320, description: "Where the link goes (default: the user's address; required with a key)" })),
  },
  { additionalProperties: false },
);

export const ExportStatus = Type.Union(['pending', 'running', 'ready', 'failed', 'expired'].map((s) => Type.Literal(s)));

export const ExportObject = Type.Object({
  id: Type.String(),
  status: ExportStatus,
  files_total: Type.Union([Type.Integer(), Type.Null()], { description: 'Known once the run has counted the files' }),
  files_done: Type.Integer(),
  bytes: Type.Integer({ description: 'Content bytes written so far' }),
  created_at: Type.String({ format: 'date-time' }),
  completed_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  expires_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()], { description: 'Why a failed export failed' }),
});

export const CreatedExport = Type.Object({ id: Type.String(), status: Type.Literal('pending'), created_at: Type.String({ format: 'date-time' }) });

export const ExportParams = Type.Object({ id: Type.String({ maxLength: 100 }) });

export const DownloadQuery = Type.Object(
  { token: Type.Optional(Type.String({ maxLength: 200, description: 'The mailed link\'s token; or send the creator\'s own credentials instead' })) },
  { additionalProperties: false },
);
