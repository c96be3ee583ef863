const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/**
 * The same base64url text with the last character's spare bits flipped by `flip` (1..3 for a
 * 32-byte MAC, whose last character carries 4 bits and 2 spare): another text that a decoder
 * turns into the same bytes.
 */
export function base64urlTwin(text: string, flip = 1): string {
  return `${text.slice(0, -1)}${ALPHABET[ALPHABET.indexOf(text.at(-1) as string) ^ flip]}`;
}
