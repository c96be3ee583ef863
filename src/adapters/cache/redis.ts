import type { CounterState, CounterStore } from '../../core/ports.ts';
import { RedisConnection, type RedisConnectionOptions } from './redis-connection.ts';

/**
 * Counters in Redis, so that rate limits (login throttling) hold across every process of a
 * distributed Bantu and survive a restart. Each counter is one integer key with a TTL:
 * the first hit creates it and sets its expiry, so Redis itself forgets ended windows.
 * Both operations are Lua scripts, atomic on the server: no hit is lost between the
 * increment and the expiry, whatever the number of processes.
 *
 * When Redis cannot serve, calls fail at once with a 503 (see RedisConnection). Failing
 * closed is deliberate: without its counters, throttling cannot stop a password guesser,
 * so logins wait for Redis rather than go unthrottled.
 */
const INCREMENT = `
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}`;

const READ = `
local count = redis.call('GET', KEYS[1])
if not count then return {0, 0} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then return {0, 0} end
return {tonumber(count), ttl}`;

/** The scripts, as ioredis defines them on the client (sent once, then run by their SHA). */
interface CounterScripts {
  bantuCounterIncrement(key: string, windowMs: number): Promise<[number, number]>;
  bantuCounterRead(key: string): Promise<[number, number]>;
}

export class RedisCounterStore implements CounterStore {
  private readonly scripts: CounterScripts;

  /** On the process's shared connection; `ownsConnection` when the store alone uses it (and closes it). */
  constructor(
    private readonly connection: RedisConnection,
    private readonly ownsConnection = false,
  ) {
    connection.client.defineCommand('bantuCounterIncrement', { numberOfKeys: 1, lua: INCREMENT });
    connection.client.defineCommand('bantuCounterRead', { numberOfKeys: 1, lua: READ, readOnly: true });
    this.scripts = connection.client as unknown as CounterScripts;
  }

  /** A store on a connection of its own (tests, tools); throws a clear error when Redis does not answer. */
  static async connect(url: string, options: RedisConnectionOptions): Promise<RedisCounterStore> {
    return new RedisCounterStore(await RedisConnection.connect(url, options), true);
  }

  async get(key: string): Promise<CounterState> {
    const [count, resetInMs] = await this.connection.call(() => this.scripts.bantuCounterRead(key));
    return { count, resetInMs };
  }

  async increment(key: string, windowMs: number): Promise<CounterState> {
    const [count, resetInMs] = await this.connection.call(() => this.scripts.bantuCounterIncrement(key, windowMs));
    return { count, resetInMs };
  }

  async reset(key: string): Promise<void> {
    await this.connection.call(() => this.connection.client.del(key));
  }

  /** For readiness: resolves when Redis answers a PING. */
  ping(): Promise<void> {
    return this.connection.ping();
  }

  async close(): Promise<void> {
    if (this.ownsConnection) await this.connection.close();
  }
}
