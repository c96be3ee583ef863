import type { Actor, BusEvent, FileObject } from '../../../core/events.ts';
import { FILE_EVENT_TYPES, type FileEventType } from '../../../core/events.ts';
import type { Environment, Principal } from '../../../core/principal.ts';

/**
 * What a subscriber may see and what it receives: pure logic, no Socket.IO.
 *
 * A user subscription sees the events of that user's own files; an admin subscription
 * (account key or admin user) sees every file event of its tenant and environment.
 */
export type Subscription =
  | { scope: 'user'; tenantId: string; environment: Environment; userId: string }
  | { scope: 'admin'; tenantId: string; environment: Environment; userId: string | null };

export interface Notification {
  event_id: string;
  type: FileEventType;
  occurred_at: string;
  file: FileObject;
  actor: Actor;
}

export type ConnectEvent = 'User_connect' | 'Admin_connect';

export type ConnectFailure = 'unauthorized' | 'invalid_payload' | 'replay_unavailable';

/** The code a client-emitted event other than a connect is answered with (stable, clients may rely on it). */
export type EventRefusal = 'forbidden' | 'unknown_event';

/** `File_*` may only come from the bus: `forbidden`; any other name: `unknown_event`. */
export function refusalFor(event: string): EventRefusal {
  return isFileEvent(event) ? 'forbidden' : 'unknown_event';
}

export interface ConnectRequest {
  credential: string;
  since: string | null;
}

export function isFileEvent(type: string): type is FileEventType {
  return (FILE_EVENT_TYPES as readonly string[]).includes(type);
}

/** Reads `{token, since?}` / `{key, since?}`; null when the payload is malformed. */
export function parseConnectPayload(event: ConnectEvent, payload: unknown): ConnectRequest | null {
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) return null;
  const { token, key, since } = payload as Record<string, unknown>;
  const credential = event === 'User_connect' ? token : (key ?? token);
  if (typeof credential !== 'string' || credential.length === 0 || credential.length > 4096) return null;
  if (since !== undefined && since !== null && (typeof since !== 'string' || since.length > 64)) return null;
  return { credential, since: typeof since === 'string' ? since : null };
}

/** The subscription a verified principal gets through a connect event, or null if it may not. */
export function subscriptionFor(event: ConnectEvent, principal: Principal): Subscription | null {
  if (event === 'User_connect') {
    return principal.kind === 'user' ? { scope: 'user', tenantId: principal.tenantId, environment: principal.environment, userId: principal.userId } : null;
  }
  if (principal.kind === 'account_key') return { scope: 'admin', tenantId: principal.tenantId, environment: principal.environment, userId: null };
  if (principal.kind === 'user' && principal.role === 'admin') {
    return { scope: 'admin', tenantId: principal.tenantId, environment: principal.environment, userId: principal.userId };
  }
  return null;
}

export function canSee(subscription: Subscription, event: BusEvent): boolean {
  if (!isFileEvent(event.type)) return false;
  if (event.tenant_id !== subscription.tenantId || event.environment !== subscription.environment) return false;
  return subscription.scope === 'admin' || event.owner_id === subscription.userId;
}

export function toNotification(event: BusEvent): Notification {
  return {
    event_id: event.event_id,
    type: event.type as FileEventType,
    occurred_at: event.occurred_at,
    file: event.data.file as FileObject,
    actor: event.actor,
  };
}

/** Rooms: every socket of a tenant's admins, and of each user. */
export function adminRoom(environment: Environment, tenantId: string): string {
  return `${environment}:${tenantId}:admin`;
}

export function userRoom(environment: Environment, tenantId: string, userId: string): string {
  return `${environment}:${tenantId}:user:${userId}`;
}

export function roomOf(subscription: Subscription): string {
  return subscription.scope === 'admin'
    ? adminRoom(subscription.environment, subscription.tenantId)
    : userRoom(subscription.environment, subscription.tenantId, subscription.userId);
}

/** Seconds-since-epoch expiry of a JWT, read without verifying (it was verified already). */
export function tokenExpiry(credential: string): number | null {
  const parts = credential.split('.');
  if (parts.length !== 3) return null;
  try {
    const payload = JSON.parse(Buffer.from(parts[1] as string, 'base64url').toString('utf8')) as { exp?: unknown };
    return typeof payload.exp === 'number' ? payload.exp : null;
  } catch {
    return null;
  }
}
