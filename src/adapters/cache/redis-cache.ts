import { randomUUID } from 'node:crypto';
import type { CacheRead, ReadThroughCache } from '../../core/ports.ts';
import type { RedisConnection } from './redis-connection.ts';

/**
 * The read-through cache in Redis, shared by every process: a change made through one process
 * is seen by the next read in any other, which a per-process cache told over pub/sub could
 * not promise (a message can arrive after the next request, or be lost while a subscriber
 * reconnects). A read is one MGET round trip instead of a database transaction.
 *
 * Two keys per cached key: `cache:g:<key>`, the key's generation (a random id that each
 * invalidation replaces), and `cache:e:<key>`, the entry (`<generation>\n<value>`). A read
 * serves the entry only if it was filled under the current generation. So a reader that
 * loaded the database before a write committed, and fills after the writer's invalidation,
 * stores an entry nobody will serve. Generations outlive entries (a day against at most an
 * hour): while an entry can still be read, its generation cannot have expired and come back.
 */
const MAX_ENTRY_MS = 3600_000;
const GENERATION_MS = 24 * 3600_000;

export class RedisReadThroughCache implements ReadThroughCache {
  constructor(private readonly connection: RedisConnection) {}

  async read(key: string): Promise<CacheRead> {
    const [generation, entry] = await this.connection.call(() => this.connection.client.mget(generationKey(key), entryKey(key)));
    const ticket = generation ?? '';
    if (entry) {
      const split = entry.indexOf('\n');
      if (split >= 0 && entry.slice(0, split) === ticket) return { value: entry.slice(split + 1), ticket };
    }
    return { value: undefined, ticket };
  }

  async fill(key: string, ticket: string, value: string, ttlMs: number): Promise<void> {
    const ms = Math.max(1, Math.min(Math.ceil(ttlMs), MAX_ENTRY_MS));
    await this.connection.call(() => this.connection.client.set(entryKey(key), `${ticket}\n${value}`, 'PX', ms));
  }

  async invalidate(key: string): Promise<void> {
    const { client } = this.connection;
    // The new generation alone suffices; deleting the entry only frees its memory sooner.
    await this.connection.call(() => Promise.all([client.set(generationKey(key), randomUUID(), 'PX', GENERATION_MS), client.del(entryKey(key))]));
  }
}

const generationKey = (key: string) => `cache:g:${key}`;
const entryKey = (key: string) => `cache:e:${key}`;
