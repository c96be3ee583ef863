/**
 * Users whose access tokens must stop working before they expire (deleted users). Kept in
 * this process for one token lifetime, after which no token issued before the deletion can
 * still be valid anyway. Other processes still refuse such a user at refresh (the user is
 * gone) and on every route that reads the user.
 */
export class UserRevocations {
  private readonly revoked = new Map<string, number>();

  constructor(
    private readonly lifetimeMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  revoke(userId: string): void {
    const now = this.now();
    if (this.revoked.size > 10_000) for (const [id, until] of this.revoked) if (until <= now) this.revoked.delete(id);
    this.revoked.set(userId, now + this.lifetimeMs);
  }

  isRevoked(userId: string): boolean {
    const until = this.revoked.get(userId);
    if (until === undefined) return false;
    if (until > this.now()) return true;
    this.revoked.delete(userId);
    return false;
  }
}
