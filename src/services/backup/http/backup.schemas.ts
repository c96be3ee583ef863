import { Type } from '@sinclair/typebox';

export const VersionEntry = Type.Object({
  version: Type.Integer({ minimum: 1, description: 'The file version this entry records (a delete repeats the last one)' }),
  event: Type.Union([Type.Literal('File_create'), Type.Literal('File_update'), Type.Literal('File_delete')]),
  name: Type.String(),
  path: Type.String(),
  size: Type.Integer({ minimum: 0 }),
  sha256: Type.String(),
  content_type: Type.String(),
  created_at: Type.String({ format: 'date-time', description: 'When the version was made (for a delete: when it was deleted)' }),
  backed_up_at: Type.String({ format: 'date-time', description: 'When the backup held it durably' }),
});

export const VersionPage = Type.Object({ data: Type.Array(VersionEntry), next_cursor: Type.Union([Type.String(), Type.Null()]) });

export const VersionsQuery = Type.Object(
  {
    limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 }),
    cursor: Type.Optional(Type.String({ maxLength: 200 })),
  },
  { additionalProperties: false },
);

export const FileIdParams = Type.Object({ id: Type.String({ maxLength: 100 }) });
export const VersionParams = Type.Object({ id: Type.String({ maxLength: 100 }), version: Type.Integer({ minimum: 1, maximum: 2_000_000_000 }) });

export const BackupStatus = Type.Object({
  pending_events: Type.Integer({ minimum: 0, description: 'File events of this environment not yet backed up' }),
  last_backup_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  versions: Type.Integer({ minimum: 0, description: 'History entries held for this tenant' }),
  bytes: Type.Integer({ minimum: 0, description: 'Distinct bytes held for this tenant (equal content counts once)' }),
  dead_letters: Type.Integer({ minimum: 0, description: 'Events of this environment the backup gave up on after its tries' }),
});

export const RetentionPolicy = Type.Union([
  Type.Object({ keep: Type.Literal('all') }, { additionalProperties: false }),
  Type.Object({ keep_last: Type.Integer({ minimum: 1, maximum: 1_000_000, description: 'Keep the last N versions of each file' }) }, { additionalProperties: false }),
  Type.Object({ keep_days: Type.Integer({ minimum: 1, maximum: 36_500, description: 'Keep versions made in the last D days' }) }, { additionalProperties: false }),
]);
