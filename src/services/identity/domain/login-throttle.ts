import { AppError, Errors } from '../../../core/errors.ts';
import type { CounterStore } from '../../../core/ports.ts';

/**
 * Login throttling: failed logins are counted per account (tenant, environment, email)
 * and per client address. Past either limit every attempt answers 429 with Retry-After
 * until the window ends, before any password is checked, so a correct guess cannot slip
 * through. Accounts are keyed by the email as typed (lower-cased), known or not: an
 * unknown address is throttled exactly like a known one and reveals nothing.
 */
export interface Limit {
  max: number;
  windowMs: number;
}

export const DEFAULT_LOGIN_LIMITS = {
  perAccount: { max: 5, windowMs: 15 * 60_000 } as Limit,
  perAddress: { max: 50, windowMs: 15 * 60_000 } as Limit,
};

export class LoginThrottle {
  constructor(
    private readonly counters: CounterStore,
    private readonly limits = DEFAULT_LOGIN_LIMITS,
  ) {}

  private keys(account: string, ip: string) {
    return { account: `login:account:${account}`, address: `login:ip:${ip}` };
  }

  /** Throws 429 rate_limited when the account or the address is over its limit. */
  async check(account: string, ip: string): Promise<void> {
    const keys = this.keys(account, ip);
    const [byAccount, byAddress] = await Promise.all([this.counters.get(keys.account), this.counters.get(keys.address)]);
    let waitMs = 0;
    if (byAccount.count >= this.limits.perAccount.max) waitMs = Math.max(waitMs, byAccount.resetInMs);
    if (byAddress.count >= this.limits.perAddress.max) waitMs = Math.max(waitMs, byAddress.resetInMs);
    if (waitMs > 0) {
      const seconds = Math.max(1, Math.ceil(waitMs / 1000));
      throw new AppError(Errors.rateLimited, `Too many failed attempts. Try again in ${seconds} seconds.`, { headers: { 'Retry-After': String(seconds) } });
    }
  }

  async failed(account: string, ip: string): Promise<void> {
    const keys = this.keys(account, ip);
    await Promise.all([
      this.counters.increment(keys.account, this.limits.perAccount.windowMs),
      this.counters.increment(keys.address, this.limits.perAddress.windowMs),
    ]);
  }

  /** A success forgives the account's failures (not the address's: one address may try many accounts). */
  async succeeded(account: string): Promise<void> {
    await this.counters.reset(`login:account:${account}`);
  }
}
