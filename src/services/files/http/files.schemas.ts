import { Type } from '@sinclair/typebox';
import { Page } from '../../../core/pagination.ts';
import { FileObject } from '../../../core/schemas.ts';

export { FileObject };

export const FilePage = Page(FileObject);

export const FileParams = Type.Object({ id: Type.String({ maxLength: 100 }) });

export const ListFilesQuery = Type.Object(
  {
    limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 }),
    cursor: Type.Optional(Type.String({ maxLength: 200 })),
    path: Type.Optional(Type.String({ maxLength: 2048, description: 'Only files directly in this folder' })),
  },
  { additionalProperties: false },
);

export const UploadQuery = Type.Object(
  {
    name: Type.Optional(Type.String({ maxLength: 1024, description: 'File name (required for a raw body; multipart defaults to the part\'s filename)' })),
    path: Type.Optional(Type.String({ maxLength: 2048, description: 'Folder, default `/`' })),
    owner_id: Type.Optional(Type.String({ maxLength: 100, description: 'Owner of the new file (account key or admin only)' })),
  },
  { additionalProperties: false },
);

export const PatchFileBody = Type.Object(
  {
    name: Type.Optional(Type.String({ maxLength: 1024 })),
    path: Type.Optional(Type.String({ maxLength: 2048 })),
  },
  { additionalProperties: false },
);

export const Usage = Type.Object({
  files: Type.Integer({ description: 'Live files' }),
  bytes: Type.Integer({ description: 'Bytes of every kept version (the quota counts these)' }),
  versions: Type.Integer(),
  backup_bytes: Type.Integer({ description: 'Distinct bytes the backups hold for this tenant and environment (the `bytes` of GET /v1/backups/status)' }),
  quota_bytes: Type.Union([Type.Integer(), Type.Null()], { description: 'null: unlimited' }),
});

export const UploadHeaders = Type.Object({
  'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 255, description: 'Retry-safe: the same key and request replay the first answer for 24 h' })),
});

export const ReplaceHeaders = Type.Object({
  'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
  'if-match': Type.Optional(Type.String({ maxLength: 1024, description: '"<sha256>" of the content you read; stale: 412 version_conflict' })),
});

/**
 * A download's 200: the file's own bytes, in its own Content-Type, which no JSON schema
 * describes. Typed null so that the document keeps a bare 200 (as before the route listed its
 * errors) and nothing is serialized (the content goes out as a stream).
 */
export const DownloadResponse = Type.Null();
