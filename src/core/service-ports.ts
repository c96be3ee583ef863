import type { Environment, Principal, TenantPrincipal } from './principal.ts';
import type { FileObject } from './schemas.ts';

/**
 * Ports between services: a service reaches another only through these. Each has an
 * in-process driver (the other service's own code, wired by the composition root) and, in
 * distributed mode, an HTTP one through the registry.
 */

/** A version the backup brings back through the files service: its content address and where it lived. */
export interface RestorableVersion {
  sha256: string;
  size: number;
  content_type: string;
  name: string;
  path: string;
}

/** What the files service offers the backup: reads, deletes, and restores as new versions. */
export interface FilesPort {
  get(principal: TenantPrincipal, id: string): Promise<FileObject>;
  list(principal: TenantPrincipal, query: { limit: number; cursor?: string }): Promise<{ data: FileObject[]; next_cursor: string | null }>;
  remove(principal: TenantPrincipal, id: string): Promise<void>;
  /**
   * Makes an earlier version current again, as the next version. `open` gives that version's
   * bytes; it is called only when the files store lacks them.
   */
  restoreVersion(
    principal: TenantPrincipal,
    id: string,
    version: RestorableVersion,
    open: () => Promise<AsyncIterable<Uint8Array>>,
  ): Promise<FileObject>;
}

/** One recorded version of a file, as the files service keeps it (its bytes are the blob `sha256`). */
export interface FileVersionRecord {
  version: number;
  name: string;
  path: string;
  size: number;
  sha256: string;
  content_type: string;
  created_at: string;
}

/**
 * What the exports service reads of files. `scan` pages through the visible files in
 * ascending id order (a keyset cursor: `after` is the last id of the previous page), so an
 * export of any size holds one page at a time. Visibility is the files list's: a user's own
 * files, every file of the tenant and environment for keys and admins.
 */
export interface FilesExportPort {
  /**
   * At most `limit` visible live files with id > `after`, ascending. `pathPrefix`: that folder
   * and its subfolders only (normalised as paths are; an invalid one fails validation_failed).
   */
  scan(principal: TenantPrincipal, query: { after?: string; limit: number; pathPrefix?: string }): Promise<FileObject[]>;
  /**
   * Every recorded version of each visible live file among `fileIds`, oldest first, in one
   * look-up for a page of files; a file that is not (or no longer) visible and live has no entry.
   */
  versions(principal: TenantPrincipal, fileIds: readonly string[]): Promise<Map<string, FileVersionRecord[]>>;
  /**
   * For each reference, in order: its blob when a version of that visible live file records
   * that sha256, null otherwise. One look-up for a page of files, not one per file; the bytes
   * are read only when a found blob is opened.
   */
  findBlobs(principal: TenantPrincipal, refs: readonly BlobRef[]): Promise<Array<FoundBlob | null>>;
}

/** A blob named by the file whose version records it (FilesExportPort.findBlobs). */
export interface BlobRef {
  fileId: string;
  sha256: string;
}

/** A blob FilesExportPort.findBlobs found for its file. */
export interface FoundBlob {
  /**
   * Its bytes (of the principal's environment). Fails not_found when the file is gone by now:
   * a driver may check visibility here rather than in `findBlobs`.
   */
  open(): Promise<AsyncIterable<Uint8Array>>;
}

/** What other services learn of a user from identity: where to mail them. */
export interface UserDirectoryPort {
  /** The calling user's email address. */
  emailOf(principal: Extract<TenantPrincipal, { kind: 'user' }>): Promise<string>;
}

/** An entry of the tenant's audit trail (identity keeps it) from another service. */
export interface AuditPort {
  record(principal: TenantPrincipal, entry: { type: 'export_created' | 'export_downloaded'; ip: string | null; detail: Record<string, unknown> }): Promise<void>;
}

/** What the backup tells the files service for `GET /v1/usage`: the distinct bytes it holds for the principal's tenant and environment. */
export interface BackupUsagePort {
  heldBytes(principal: TenantPrincipal): Promise<number>;
}

/**
 * Turns a credential (key, token) into a principal, or null when it is not one this verifier
 * knows or it is not valid. Identity provides the verifiers of keys and user tokens; the
 * gateway and the notifications service use them without knowing how they work.
 */
export interface CredentialVerifier {
  verify(credential: string): Promise<Principal | null>;
}

/**
 * What a service tells the administrators of a tenant and environment about something that
 * needs them (a webhook endpoint disabled): an audit entry, and a mail to each admin user, if
 * any. Identity implements it (audit trail and users are its own).
 */
export interface AdminNoticePort {
  notify(environment: Environment, tenantId: string, notice: AdminNotice): Promise<void>;
}

export interface AdminNotice {
  /** The audit entry's type, e.g. `webhook_disabled`. */
  type: string;
  detail: Record<string, unknown>;
  subject: string;
  text: string;
}
