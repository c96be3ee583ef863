import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

/**
 * Seals small secrets (JWT private keys) for storage with AES-256-GCM. The 256-bit key is
 * derived with HKDF-SHA256 from the instance secret (a file in the data dir, or
 * BANTU_SECRET_KEY), so any string of enough entropy works as that secret.
 * Sealed layout: version (1 byte) | IV (12) | tag (16) | ciphertext.
 * `purpose` is bound as associated data: a sealed value cannot be moved to another use.
 */
const VERSION = 1;

export class SecretBox {
  private readonly key: Buffer;

  constructor(secret: string) {
    if (secret.length < 32) throw new Error('the secret key must be at least 32 characters');
    this.key = Buffer.from(hkdfSync('sha256', Buffer.from(secret, 'utf8'), 'bantu', 'bantu signing keys v1', 32));
  }

  seal(plaintext: Buffer, purpose: string): Buffer {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    cipher.setAAD(Buffer.from(purpose, 'utf8'));
    const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([Buffer.from([VERSION]), iv, cipher.getAuthTag(), ciphertext]);
  }

  /** Throws when the value was sealed under another secret or purpose, or was altered. */
  open(sealed: Buffer, purpose: string): Buffer {
    if (sealed.length < 29 || sealed[0] !== VERSION) throw new Error('not a sealed value of a known version');
    const decipher = createDecipheriv('aes-256-gcm', this.key, sealed.subarray(1, 13));
    decipher.setAAD(Buffer.from(purpose, 'utf8'));
    decipher.setAuthTag(sealed.subarray(13, 29));
    return Buffer.concat([decipher.update(sealed.subarray(29)), decipher.final()]);
  }
}
