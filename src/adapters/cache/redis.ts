import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AppError, Errors } from '../../core/errors.ts';
import type { CounterState, CounterStore } from '../../core/ports.ts';

/**
 * Counters in Redis, so that rate limits (login throttling) hold across every process of a
 * distributed Bantu and survive a restart. Each counter is one integer key with a TTL:
 * the first hit creates it and sets its expiry, so Redis itself forgets ended windows.
 * Both operations are Lua scripts, atomic on the server: no hit is lost between the
 * increment and the expiry, whatever the number of processes.
 *
 * Every key starts with `prefix` (BANTU_REDIS_PREFIX), so one Redis can serve several
 * installations. When Redis cannot serve, calls fail within `commandTimeoutMs` with a
 * 503 `service_unavailable` (Retry-After 5) rather than queueing: logins answer at once
 * and /readyz reports Redis down, instead of requests piling up behind a dead connection.
 * Failing closed is deliberate: without its counters, throttling cannot stop a password
 * guesser, so logins wait for Redis rather than go unthrottled.
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

/** Redis did not answer at start: the CLI says so in one line and exits. */
export class RedisUnreachableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RedisUnreachableError';
  }
}

/**
 * Replies that mean "this command is wrong" (a bug here, such as a key of another type under
 * our prefix). Every other failure, replies included (OOM, MISCONF, LOADING, READONLY,
 * NOAUTH...), means this Redis cannot serve right now.
 */
const BUG_REPLY = /^(WRONGTYPE|ERR (Error running script|user_script|wrong number of arguments|unknown command))/;

export interface RedisCounterStoreOptions {
  prefix: string;
  /** How long one call may wait for Redis before it fails. Default 2000 ms. */
  commandTimeoutMs?: number;
  /** Told when the connection is lost and when it is back (once each, not per retry). */
  logger?: Pick<Logger, 'warn' | 'info'>;
}

export class RedisCounterStore implements CounterStore {
  private closing = false;

  private constructor(
    private readonly redis: Redis,
    private readonly scripts: CounterScripts,
  ) {}

  /** Connects and checks that Redis answers; throws a clear error when it does not. */
  static async connect(url: string, options: RedisCounterStoreOptions): Promise<RedisCounterStore> {
    const timeout = options.commandTimeoutMs ?? 2000;
    const redis = new Redis(url, {
      keyPrefix: options.prefix,
      lazyConnect: true,
      connectTimeout: timeout,
      commandTimeout: timeout,
      // Fail fast while disconnected (no offline queue, one retry) and keep reconnecting in
      // the background, at most every 2 s.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      // A command cut off by a lost connection has already failed its caller (503): sending
      // it again after the reconnection could count a hit twice.
      autoResendUnfulfilledCommands: false,
      retryStrategy: (attempt) => Math.min(attempt * 100, 2000),
    });
    // Without a listener, a connection error would be an unhandled 'error' event.
    let lastError = '';
    redis.on('error', (error: Error) => {
      lastError = error.message;
    });
    redis.defineCommand('bantuCounterIncrement', { numberOfKeys: 1, lua: INCREMENT });
    redis.defineCommand('bantuCounterRead', { numberOfKeys: 1, lua: READ, readOnly: true });
    try {
      await redis.connect();
      await redis.ping();
    } catch (error) {
      redis.disconnect();
      // The socket's own error (ECONNREFUSED, ENOTFOUND, NOAUTH...) says more than ioredis's "Connection is closed".
      throw new RedisUnreachableError(`REDIS_URL: cannot reach Redis at ${redactedUrl(url)} (${lastError || (error instanceof Error ? error.message : String(error))})`);
    }
    const store = new RedisCounterStore(redis, redis as unknown as CounterScripts);
    // Reconnection attempts stay quiet; losing and regaining the connection are logged once each.
    let lost = false;
    redis.on('close', () => {
      if (lost || store.closing) return;
      lost = true;
      options.logger?.warn({ redis: redactedUrl(url), error: lastError || undefined }, 'Redis connection lost: logins answer 503 until it is back');
    });
    redis.on('ready', () => {
      if (!lost) return;
      lost = false;
      options.logger?.info({ redis: redactedUrl(url) }, 'Redis connection back');
    });
    return store;
  }

  async get(key: string): Promise<CounterState> {
    const [count, resetInMs] = await this.call(() => this.scripts.bantuCounterRead(key));
    return { count, resetInMs };
  }

  async increment(key: string, windowMs: number): Promise<CounterState> {
    const [count, resetInMs] = await this.call(() => this.scripts.bantuCounterIncrement(key, windowMs));
    return { count, resetInMs };
  }

  async reset(key: string): Promise<void> {
    await this.call(() => this.redis.del(key));
  }

  /** For readiness: resolves when Redis answers a PING. */
  async ping(): Promise<void> {
    await this.call(() => this.redis.ping());
  }

  async close(): Promise<void> {
    this.closing = true;
    try {
      await this.redis.quit();
    } catch {
      this.redis.disconnect();
    }
  }

  private async call<T>(command: () => Promise<T>): Promise<T> {
    try {
      return await command();
    } catch (error) {
      // A bug stays a 500 with its cause logged; anything else is Redis unable to serve.
      // The client learns nothing of what is behind the gateway (the cause goes to the log).
      if (error instanceof Error && error.name === 'ReplyError' && BUG_REPLY.test(error.message)) throw error;
      throw new AppError(Errors.unavailable, 'A service this request needs is not answering. Try again shortly.', {
        headers: { 'Retry-After': '5' },
        cause: error,
      });
    }
  }
}

/**
 * Where Redis is, for messages and logs: scheme, host, port and database only. Credentials
 * can hide in the user info and in the query (`?password=`), so neither is shown.
 */
function redactedUrl(url: string): string {
  try {
    const parsed = new URL(url);
    const credentials = parsed.username || parsed.password ? '***@' : '';
    return `${parsed.protocol}//${credentials}${parsed.host}${parsed.pathname === '/' ? '' : parsed.pathname}`;
  } catch {
    return 'REDIS_URL';
  }
}
