import pg from 'pg';
import type { Logger } from 'pino';

/**
 * Leader election: work that must run once per installation (a work consumer on the outbox,
 * a sweep) runs only in the process that holds a session-level advisory lock on the control
 * database, which every process of the installation shares (DATABASE_URL).
 *
 * The lock lives on one dedicated connection, never a pooled one: PostgreSQL releases it when
 * that session ends, which is what makes takeover work. A leader killed with -9 has its
 * socket closed by its kernel; the server ends the session, and the next try of a standby
 * (every `retryMs`) wins. Through PgBouncer in transaction mode a session lock means nothing:
 * the URL must reach PostgreSQL itself (or a pooler in session mode).
 *
 * The led work stops (`onDeposed`) as soon as this process can no longer be sure it holds the
 * lock: its connection reports an error or ends, or a `select 1` every `checkMs` fails or does
 * not answer within CHECK_TIMEOUT_MS. A vanished host (no FIN, no RST) is noticed both ways:
 * the client by that check (and TCP keepalive), the server by TCP keepalive and
 * `idle_session_timeout` on the session (a client that stops checking, frozen or gone, loses
 * the lock after IDLE_SESSION_MS). Between the lock's loss on the server and the old leader's
 * noticing, both may run for up to a check's interval and timeout; led work must be
 * idempotent (the bus's consumers are, at least once).
 */
export interface LeadershipOptions {
  logger: Logger;
  /** Starts the led work, once this process holds the lock. */
  onElected(): Promise<void> | void;
  /**
   * Stops it: called at once when the lock may be lost, and on close (before the lock is
   * released, so that no other process starts while this one still runs). Never runs
   * alongside `onElected`: it waits for it to finish first.
   */
  onDeposed(): Promise<void> | void;
  /** How often a standby tries to take the lock. Default 1000 ms. */
  retryMs?: number;
  /** How often the leader checks its lock's connection. Default 1000 ms. */
  checkMs?: number;
}

export interface Leadership {
  /** Whether this process leads now (from `onElected` until `onDeposed`). */
  readonly leading: boolean;
  /**
   * The first try's outcome: true once elected and `onElected` has returned, false when another
   * process leads (or the database could not be reached). A process alone wins at once.
   */
  readonly decided: Promise<boolean>;
  /** Stops the led work if this process leads, then releases the lock. */
  close(): Promise<void>;
}

/** A check (or a lock try) that takes longer than this counts as a lost connection. */
const CHECK_TIMEOUT_MS = 3000;
/** The server ends a lock session that stays idle this long (the leader checks every second). */
const IDLE_SESSION_MS = 10_000;

/**
 * Contends for the leadership of `name` (its lock key: hashtextextended('bantu.leader.' || name, 0))
 * on the control database at `controlUrl`, until closed.
 */
export function leadership(controlUrl: string, name: string, options: LeadershipOptions): Leadership {
  const retryMs = options.retryMs ?? 1000;
  const checkMs = options.checkMs ?? 1000;
  const log = options.logger.child({ leadership: name });
  let leading = false;
  let closed = false;
  let decide!: (elected: boolean) => void;
  const decided = new Promise<boolean>((resolve) => (decide = resolve));
  // What the log last said (leader, standby, or a connection problem): each is logged once when it starts.
  let said: string | undefined;
  const say = (state: string, level: 'info' | 'warn', message: string, extra: object = {}) => {
    if (said !== state) log[level]({ leader: state === 'leader', ...extra }, message);
    said = state;
  };

  let wake = () => {};
  /** Waits `ms`, or less if closed. */
  const nap = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  /** One lock connection's life: stand by until elected, lead until it is lost or closed. */
  async function session(): Promise<void> {
    const client = new pg.Client({
      connectionString: controlUrl,
      application_name: `bantu leader ${name}`.slice(0, 63),
      keepAlive: true,
      keepAliveInitialDelayMillis: 5000,
      connectionTimeoutMillis: CHECK_TIMEOUT_MS,
      query_timeout: CHECK_TIMEOUT_MS,
    });
    // Resolves with why the connection is gone, from its events (a query in flight fails too).
    let gone!: (reason: string) => void;
    const lost = new Promise<string>((resolve) => (gone = resolve));
    client.on('error', (error) => gone(error.message));
    client.on('end', () => gone('connection ended'));
    /** Waits `ms`; the reason when the connection went meanwhile. */
    const wait = (ms: number) => Promise.race([lost, nap(ms).then(() => undefined)]);
    try {
      await client.connect();
      // The server's side of a vanished client: keepalive probes, and a session that stops checking ends.
      await client.query(`set tcp_keepalives_idle = 5; set tcp_keepalives_interval = 2; set tcp_keepalives_count = 3;
        select set_config('idle_session_timeout', '${Math.max(IDLE_SESSION_MS, 5 * checkMs)}ms', false)
        where current_setting('server_version_num')::int >= 140000`);
      while (!closed) {
        const result = await client.query<{ locked: boolean }>("select pg_try_advisory_lock(hashtextextended('bantu.leader.' || $1, 0)) as locked", [name]);
        if (result.rows[0]?.locked) break;
        say('standby', 'info', `standing by: another process leads ${name}`);
        decide(false);
        const reason = await wait(retryMs);
        if (reason !== undefined) throw new Error(reason);
      }
      if (closed) return;
      await lead(client, wait);
    } catch (error) {
      say(`failing: ${(error as Error).message}`, 'warn', `leadership of ${name}: connection failed; retrying`, { err: error });
      decide(false);
    } finally {
      await disconnect(client);
    }
  }

  /** Runs the led work while the lock is held: until the connection is lost or the leadership closed. */
  async function lead(client: pg.Client, wait: (ms: number) => Promise<string | undefined>): Promise<void> {
    leading = true;
    say('leader', 'info', `elected leader of ${name}: running its work`);
    let reason: string | undefined;
    try {
      await options.onElected();
      decide(true);
    } catch (error) {
      log.error({ err: error }, `the work of ${name} failed to start; resigning`);
      reason = 'the work failed to start';
      decide(false);
    }
    while (reason === undefined && !closed) {
      reason = await wait(checkMs);
      if (reason === undefined && !closed) reason = await client.query('select 1').then(() => undefined, (error: Error) => error.message);
    }
    leading = false;
    try {
      await options.onDeposed();
    } catch (error) {
      log.error({ err: error }, `the work of ${name} failed to stop`);
    }
    if (closed) log.info({ leader: false }, `leadership of ${name} released: shutting down`);
    else say(`deposed: ${reason}`, 'warn', `lost the leadership of ${name} (${reason}): its work stopped; standing by`);
  }

  const contending = (async () => {
    while (!closed) {
      await session();
      if (!closed) await nap(retryMs);
    }
    decide(false);
  })();

  return {
    get leading() {
      return leading;
    },
    decided,
    async close() {
      closed = true;
      wake();
      await contending;
    },
  };
}

/** Ends the session (which releases the lock); a server that never answers the goodbye has its socket dropped. */
async function disconnect(client: pg.Client): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([client.end().catch(() => undefined), new Promise((resolve) => (timer = setTimeout(resolve, 1000)))]);
  clearTimeout(timer);
  // pg has no public way to drop a connection whose peer is gone; its socket is `connection.stream`.
  (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
}
