import { timingSafeEqual } from 'node:crypto';

/**
 * Whether a presented MAC or token equals the expected one, in time that does not depend on
 * where they differ. MACs are compared as their base64url text, never decoded first: decoding
 * ignores the spare low bits of the last character, so `…A` and `…B` would pass for one MAC
 * and a changed token would still verify.
 */
export function sameText(given: string, expected: string): boolean {
  const a = Buffer.from(given, 'utf8');
  const b = Buffer.from(expected, 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}
