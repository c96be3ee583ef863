import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AppError, Errors } from '../../core/errors.ts';

/**
 * The one Redis connection of a process, shared by every Redis driver (counters, revocations,
 * the user cache). Every key starts with `prefix` (BANTU_REDIS_PREFIX), so one Redis can serve
 * several installations.
 *
 * When Redis cannot serve, calls fail within `commandTimeoutMs` with a 503
 * `service_unavailable` (Retry-After 5) rather than queueing: requests answer at once and
 * /readyz reports Redis down, instead of piling up behind a dead connection. What each caller
 * does with that failure is its own choice (logins fail closed, caches go to the database).
 */

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

export interface RedisConnectionOptions {
  prefix: string;
  /** How long one call may wait for Redis before it fails. Default 2000 ms. */
  commandTimeoutMs?: number;
  /** Told when the connection is lost and when it is back (once each, not per retry). */
  logger?: Pick<Logger, 'warn' | 'info'>;
}

export class RedisConnection {
  private closing = false;

  private constructor(readonly client: Redis) {}

  /** Connects and checks that Redis answers; throws a clear error when it does not. */
  static async connect(url: string, options: RedisConnectionOptions): Promise<RedisConnection> {
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
    try {
      await redis.connect();
      await redis.ping();
    } catch (error) {
      redis.disconnect();
      // The socket's own error (ECONNREFUSED, ENOTFOUND, NOAUTH...) says more than ioredis's "Connection is closed".
      throw new RedisUnreachableError(`REDIS_URL: cannot reach Redis at ${redactedUrl(url)} (${lastError || (error instanceof Error ? error.message : String(error))})`);
    }
    const connection = new RedisConnection(redis);
    // Reconnection attempts stay quiet; losing and regaining the connection are logged once each.
    let lost = false;
    redis.on('close', () => {
      if (lost || connection.closing) return;
      lost = true;
      options.logger?.warn(
        { redis: redactedUrl(url), error: lastError || undefined },
        'Redis connection lost: logins answer 503, token checks read the database and caches are bypassed until it is back',
      );
    });
    redis.on('ready', () => {
      if (!lost) return;
      lost = false;
      options.logger?.info({ redis: redactedUrl(url) }, 'Redis connection back');
    });
    return connection;
  }

  /** Runs a command; anything but a bug in the command becomes a 503 `service_unavailable`. */
  async call<T>(command: () => Promise<T>): Promise<T> {
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

  /** For readiness: resolves when Redis answers a PING. */
  async ping(): Promise<void> {
    await this.call(() => this.client.ping());
  }

  async close(): Promise<void> {
    this.closing = true;
    try {
      await this.client.quit();
    } catch {
      this.client.disconnect();
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
