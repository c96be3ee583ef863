import { createHash, randomBytes } from 'node:crypto';
import type { Environment } from '../../../core/principal.ts';

/**
 * Stripe-style API keys: `acc_<body>_live`, `app_<body>_test`.
 * The body is 32 base62 characters of randomness (about 190 bits) followed by a
 * 6-character checksum of the rest, so a mistyped or truncated key is refused before
 * any database lookup. Only SHA-256(key) is stored, plus a display prefix.
 */
export type KeyKind = 'account' | 'application';

/**
 * What an account may grant an application key beyond register/login/refresh/password
 * recovery. A fixed list: an unknown scope is a client error (422), never silently ignored.
 */
export const SCOPES = ['files:read', 'files:write', 'users:read', 'users:write', 'exports:read', 'exports:write', 'notifications:read'] as const;
export type Scope = (typeof SCOPES)[number];

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const KIND_PREFIX: Record<KeyKind, string> = { account: 'acc', application: 'app' };
const RANDOM_LENGTH = 32;
const CHECKSUM_LENGTH = 6;
const KEY_PATTERN = /^(acc|app)_([0-9A-Za-z]{38})_(live|test)$/;

function base62(bytes: Buffer, length: number): string {
  // Rejection sampling keeps every character uniform.
  let out = '';
  let source = bytes;
  let index = 0;
  while (out.length < length) {
    if (index >= source.length) {
      source = randomBytes(64);
      index = 0;
    }
    const byte = source[index++] as number;
    if (byte < 248) out += BASE62[byte % 62];
  }
  return out;
}

function checksumOf(text: string): string {
  const digest = createHash('sha256').update(text).digest();
  let out = '';
  for (let i = 0; i < CHECKSUM_LENGTH; i++) out += BASE62[(digest[i] as number) % 62];
  return out;
}

export interface ParsedKey {
  kind: KeyKind;
  environment: Environment;
}

export function generateKey(kind: KeyKind, environment: Environment): string {
  const head = `${KIND_PREFIX[kind]}_${base62(randomBytes(48), RANDOM_LENGTH)}`;
  return `${head}${checksumOf(`${head}_${environment}`)}_${environment}`;
}

/** Checks the shape and checksum only; null when the key cannot be one of ours. */
export function parseKey(key: string): ParsedKey | null {
  const match = KEY_PATTERN.exec(key);
  if (!match) return null;
  const [, kindPrefix, body, environment] = match as unknown as [string, string, string, Environment];
  const random = body.slice(0, RANDOM_LENGTH);
  if (checksumOf(`${kindPrefix}_${random}_${environment}`) !== body.slice(RANDOM_LENGTH)) return null;
  return { kind: kindPrefix === 'acc' ? 'account' : 'application', environment };
}

export function hashKey(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

/** What lists show instead of the secret: `acc_4fQx…_live`. */
export function displayPrefix(key: string): string {
  const environment = key.slice(-5);
  return `${key.slice(0, 8)}…${environment}`;
}
