import type { Environment } from './principal.ts';
import type { FileObject } from './schemas.ts';

/**
 * Events on the bus. Every event is committed in the same transaction as the change it
 * describes (transactional outbox) and delivered at least once: consumers dedupe by
 * `event_id`. Within one stream, events arrive in commit order.
 */
export const FILE_EVENT_TYPES = ['File_create', 'File_update', 'File_delete'] as const;
export type FileEventType = (typeof FILE_EVENT_TYPES)[number];

export type { FileObject } from './schemas.ts';

export interface FileEventData {
  file: FileObject;
}

export interface Actor {
  type: 'user' | 'key' | 'operator' | 'system';
  id: string;
}

export interface BusEvent<Data = Record<string, unknown>> {
  event_id: string;
  type: string;
  tenant_id: string;
  environment: Environment;
  occurred_at: string;
  actor: Actor;
  /** The subject's owner when there is one (a file's owner): lets consumers filter cheaply. */
  owner_id?: string | null;
  data: Data;
  /**
   * The W3C traceparent of the work that appended it, when tracing is on: a consumer's span
   * joins that trace. Internal: neither notifications nor webhook deliveries carry it.
   */
  traceparent?: string;
}

/** What a producer appends; the bus adds the id, environment and time. */
export interface NewEvent<Data = Record<string, unknown>> {
  type: string;
  tenant_id: string;
  actor: Actor;
  owner_id?: string | null;
  data: Data;
  /** The W3C traceparent of the work that appends it (src/core/trace.ts traceparentOf), when traced. */
  traceparent?: string;
}
