import { Algorithm, hash, verify } from '@node-rs/argon2';

/**
 * Password hashing with argon2id at OWASP's minimum (19 MiB, 2 passes, 1 lane). Hashes are
 * PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$...`), so stronger parameters can be adopted
 * later without breaking existing hashes. Passwords are never logged nor returned.
 */
export const PASSWORD_MIN = 8;
export const PASSWORD_MAX = 1024;

export const ARGON2_OPTIONS = { algorithm: Algorithm.Argon2id, memoryCost: 19456, timeCost: 2, parallelism: 1 } as const;

export class PasswordHasher {
  private dummy: Promise<string> | undefined;

  hash(password: string): Promise<string> {
    return hash(password, ARGON2_OPTIONS);
  }

  async verify(passwordHash: string, password: string): Promise<boolean> {
    try {
      return await verify(passwordHash, password);
    } catch {
      return false;
    }
  }

  /**
   * Spends the time of one verification against a hash no password matches: lets a login
   * with an unknown email take about as long as one with a wrong password.
   */
  async verifyDummy(password: string): Promise<false> {
    this.dummy ??= hash(`dummy-${Math.random()}`, ARGON2_OPTIONS);
    await this.verify(await this.dummy, password);
    return false;
  }
}
