import { Errors, fail } from '../../../core/errors.ts';
import type { StagedBlob, StoredBlob } from '../../../core/ports.ts';
import type { TenantPrincipal } from '../../../core/principal.ts';
import { fingerprintOf, type Idempotency, type RecordedAnswer, replayOf, type WriteAnswer } from './idempotency.ts';
import { normalizePath, validateName } from './names.ts';

/**
 * The upload workflow, one function per write: what is refused before a byte is read, what is
 * stored when, and what a retry under an Idempotency-Key gets. Transport-free: the caller
 * (the HTTP routes) turns its request into an `Upload` and hands the content over through
 * `read`, raw or from a multipart body.
 */

/** Multipart framing and form fields around the content: a declared size beyond limit + this is refused unread. */
export const FRAMING_SLACK = 1024 * 1024;

/**
 * A body smaller than this arrives with its request: refusing a taken name before
 * reading it saves the client nothing, while the check costs every small create a round trip
 * of its own (about a quarter of a 1 KiB create's CPU). Such a create is refused by the
 * name's unique index at the insert instead, with the same 409 `file_exists`; its blob, by
 * then committed, is an orphan the files sweep removes.
 */
export const PRECHECK_FROM_BYTES = 64 * 1024;

/** The largest upload a principal may send now, and whether the quota (not the size limit) sets it. */
export interface UploadLimit {
  maxBytes: number;
  byQuota: boolean;
}

/** Where a new file goes: its name, its folder, and who owns it. */
export interface CreateTarget {
  name: string;
  path: string;
  owner: string | null;
}

/** What the content of an upload became when only hashed (a replay keeps nothing). */
export interface HashedContent {
  sha256: string;
  size: number;
}

/** Form fields that come with the content (multipart), and the filename its part gave. None for a raw body. */
export interface UploadForm {
  fields: Record<string, string>;
  filename?: string;
}

/** The body once read to its end: every form field, and the content's type. */
export interface UploadBody extends UploadForm {
  contentType: string | undefined;
}

/**
 * Takes the content as it arrives, with the form fields seen before it. Called once per
 * upload, before the body has been read further than the content's start.
 */
export type ConsumeContent = (content: AsyncIterable<Uint8Array>, before: UploadForm) => Promise<void>;

/** An upload as the domain sees it, whatever carried it. */
export interface Upload {
  /** The size the body announced (Content-Length), if any: too large is refused before a byte is read. */
  declaredBytes: number | undefined;
  /** The content comes framed, with fields around it (multipart): the declared size may exceed it by FRAMING_SLACK. */
  framed: boolean;
  idempotencyKey: string | undefined;
  /**
   * Reads the body: hands the content to `consume` once (rejecting if it never comes), then
   * resolves with the whole form once the body has ended and was found sound. Rejects on
   * anything wrong with the body, also after `consume` returned.
   */
  read(consume: ConsumeContent): Promise<UploadBody>;
}

export interface CreateUpload extends Upload {
  /** What the request line says (`?name=&path=&owner_id=`); form fields of the same names win over it. */
  fields: { name?: string; path?: string; owner_id?: string };
}

export interface ReplaceUpload extends Upload {
  /** `"<sha256>"` (a list, or `*`) the current content must match. */
  ifMatch: string | undefined;
}

/**
 * What the workflow asks of the files service (`FilesService` is one). Invariants the workflow
 * relies on: the checks touch no bytes; `stageContent` keeps nothing unless its blob is
 * committed and removes what it wrote when it fails; `hashContent` keeps nothing at all;
 * `create` and `replace` get a committed blob and record the answer under `idempotency`.
 */
export interface UploadSteps {
  /** The limit in force; throws 413 (`payload_too_large`, `quota_exceeded`) when `declared` exceeds it by more than `slack`. */
  checkDeclaredSize(principal: TenantPrincipal, declared: number | undefined, slack: number): Promise<UploadLimit>;
  recordedAnswer(principal: TenantPrincipal, key: string): Promise<RecordedAnswer | null>;
  /** Who owns a new file; throws when this principal may not name `ownerId`, or it is no user id. */
  resolveOwner(principal: TenantPrincipal, ownerId: string | undefined): string | null;
  /** Throws 409 `file_exists` when the name is taken. */
  precheckCreate(principal: TenantPrincipal, target: CreateTarget): Promise<void>;
  /** Throws 404 on a file the caller cannot see, 412 on a stale `ifMatch`. */
  precheckReplace(principal: TenantPrincipal, id: string, ifMatch: string | undefined): Promise<void>;
  stageContent(principal: TenantPrincipal, content: AsyncIterable<Uint8Array>, limit: UploadLimit): Promise<StagedBlob>;
  hashContent(content: AsyncIterable<Uint8Array>, limit: UploadLimit): Promise<HashedContent>;
  create(principal: TenantPrincipal, input: CreateTarget & { contentType?: string; blob: StoredBlob; idempotency?: Idempotency }): Promise<WriteAnswer>;
  replace(principal: TenantPrincipal, id: string, input: { contentType?: string; blob: StoredBlob; ifMatch?: string; idempotency?: Idempotency }): Promise<WriteAnswer>;
}

/**
 * The operations as fingerprints name them: the API's method and path, as fingerprints were
 * first computed at the HTTP layer, so that answers recorded in that form keep replaying.
 */
const CREATE = ['POST', '/v1/files'] as const;

/** Whether the whole body comes with the request (see PRECHECK_FROM_BYTES); a body of unknown length may be long. */
const arrivesWhole = (upload: Upload) => upload.declaredBytes !== undefined && upload.declaredBytes < PRECHECK_FROM_BYTES;
const replaceOf = (id: string) => ['PUT', `/v1/files/${id}/content`] as const;

export class FileUploads {
  constructor(private readonly files: UploadSteps) {}

  /**
   * A new file from an upload. Fails before the content is stored on what the request already
   * says (its declared size, its name, a name taken unless the body is small: see
   * PRECHECK_FROM_BYTES); with a recorded answer under its
   * Idempotency-Key the content is only hashed, and the answer replayed (or 409 when the
   * request differs).
   */
  async createFromUpload(principal: TenantPrincipal, upload: CreateUpload): Promise<WriteAnswer> {
    const limit = await this.files.checkDeclaredSize(principal, upload.declaredBytes, upload.framed ? FRAMING_SLACK : 0);
    const key = upload.idempotencyKey;
    const recorded = key ? await this.files.recordedAnswer(principal, key) : null;
    const target = (form: UploadForm) => this.createTarget(principal, upload.fields, form);
    return this.withContent(
      upload,
      async (content, before) => {
        const known = target(before);
        // Not with an Idempotency-Key: a twin that committed meanwhile must be replayed, not refused.
        if (!key && !arrivesWhole(upload)) await this.files.precheckCreate(principal, known);
        return recorded ? this.files.hashContent(content, limit) : this.files.stageContent(principal, content, limit);
      },
      async (body, content, commit) => {
        const final = target(body);
        const fingerprint = fingerprintOf(CREATE, principal, content.sha256, [final.name, final.path, final.owner, body.contentType ?? null]);
        if (recorded) return replayOf(recorded, fingerprint);
        const blob = await commit();
        return this.files.create(principal, { ...final, contentType: body.contentType, blob, idempotency: key ? { key, fingerprint } : undefined });
      },
    );
  }

  /**
   * A new version of a file from an upload. A file the caller cannot see is a 404 whatever the
   * body, checked before its size; so is a stale If-Match (412), unless a recorded answer
   * under the Idempotency-Key is to be replayed.
   */
  async replaceFromUpload(principal: TenantPrincipal, id: string, upload: ReplaceUpload): Promise<WriteAnswer> {
    const key = upload.idempotencyKey;
    const recorded = key ? await this.files.recordedAnswer(principal, key) : null;
    if (!recorded) await this.files.precheckReplace(principal, id, key ? undefined : upload.ifMatch);
    const limit = await this.files.checkDeclaredSize(principal, upload.declaredBytes, upload.framed ? FRAMING_SLACK : 0);
    return this.withContent(
      upload,
      (content) => (recorded ? this.files.hashContent(content, limit) : this.files.stageContent(principal, content, limit)),
      async (body, content, commit) => {
        const fingerprint = fingerprintOf(replaceOf(id), principal, content.sha256, [upload.ifMatch ?? null, body.contentType ?? null]);
        if (recorded) return replayOf(recorded, fingerprint);
        const blob = await commit();
        return this.files.replace(principal, id, {
          contentType: body.contentType,
          blob,
          ifMatch: upload.ifMatch,
          idempotency: key ? { key, fingerprint } : undefined,
        });
      },
    );
  }

  /** The name, folder and owner an upload asks for: form fields, then the request line, then the part's filename. */
  private createTarget(principal: TenantPrincipal, fields: CreateUpload['fields'], form: UploadForm): CreateTarget {
    const rawName = form.fields.name ?? fields.name ?? form.filename;
    if (rawName === undefined || rawName === '') {
      fail(Errors.validationFailed, 'The file needs a name (?name= or the multipart filename)', { errors: [{ field: 'name', message: 'is required' }] });
    }
    return {
      name: validateName(rawName),
      path: normalizePath(form.fields.path ?? fields.path),
      owner: this.files.resolveOwner(principal, form.fields.owner_id ?? fields.owner_id),
    };
  }

  /**
   * Reads the upload, its content going to `store`, then hands body and content to `use`.
   * Staged content is discarded when anything fails before `use` commits it: the rest of the
   * body (cut short after the content), a field after it, a conflicting replay. Once `commit`
   * has been called it is never discarded: a write that fails after it leaves an unreferenced
   * blob, swept later (see FilesService).
   */
  private async withContent(
    upload: Upload,
    store: (content: AsyncIterable<Uint8Array>, before: UploadForm) => Promise<StagedBlob | HashedContent>,
    use: (body: UploadBody, content: HashedContent, commit: () => Promise<StoredBlob>) => Promise<WriteAnswer>,
  ): Promise<WriteAnswer> {
    let stored: StagedBlob | HashedContent | undefined;
    let committing = false;
    try {
      const body = await upload.read(async (content, before) => {
        stored = await store(content, before);
      });
      const content = stored;
      if (!content) throw new Error('the upload was read without its content');
      return await use(body, content, async () => {
        if (!('commit' in content)) throw new Error('only staged content can be committed');
        committing = true;
        return content.commit();
      });
    } catch (error) {
      if (stored && 'discard' in stored && !committing) await stored.discard();
      throw error;
    }
  }
}
