import { type Static, Type } from '@sinclair/typebox';

/**
 * Schemas shared by several services, defined once: each gives the validation, the TypeScript
 * type and the OpenAPI document of what it describes.
 */

/** The contract's File object, as the files routes answer it and file events carry it (`data.file`; the last state for a delete). */
export const FileObject = Type.Object({
  id: Type.String(),
  name: Type.String(),
  path: Type.String({ description: 'Folder, normalised: `/` or `/a/b`' }),
  size: Type.Integer({ minimum: 0 }),
  content_type: Type.String(),
  sha256: Type.String({ description: 'Hex SHA-256 of the content; the download ETag is this in quotes' }),
  version: Type.Integer({ minimum: 1, description: 'Counts every change: content, name or folder' }),
  owner_id: Type.Union([Type.String(), Type.Null()], { description: 'Owning user; null when the tenant owns the file' }),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
});
export type FileObject = Static<typeof FileObject>;
