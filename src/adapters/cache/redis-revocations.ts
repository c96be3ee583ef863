import type { RevocationList } from '../../core/ports.ts';
import type { RedisConnection } from './redis-connection.ts';

/**
 * Revocations in Redis: one key per revoked id (`revoked:<id>`), which Redis expires with the
 * revocation, so the list never outgrows the access tokens still alive. A check is one EXISTS
 * over every id it asks about: one round trip per authenticated request.
 *
 * When Redis cannot serve, both calls reject (503, see RedisConnection): the caller decides
 * how to fail closed (identity then asks the database, see TokenRevocations).
 *
 * A Redis that comes back without its data (no persistence) has forgotten the revocations of
 * the last token lifetime, as a restarted process forgets its in-memory list: run Redis with
 * persistence (AOF) where that matters.
 */
export class RedisRevocationList implements RevocationList {
  constructor(private readonly connection: RedisConnection) {}

  async revoke(ids: readonly string[], ttlMs: number): Promise<void> {
    if (ids.length === 0) return;
    const { client } = this.connection;
    // Sent together without waiting between them (ioredis writes them back to back).
    await this.connection.call(() => Promise.all(ids.map((id) => client.set(keyOf(id), '1', 'PX', Math.max(1, Math.ceil(ttlMs))))));
  }

  async anyRevoked(ids: readonly string[]): Promise<boolean> {
    if (ids.length === 0) return false;
    const found = await this.connection.call(() => this.connection.client.exists(...ids.map(keyOf)));
    return found > 0;
  }
}

const keyOf = (id: string) => `revoked:${id}`;
