import { randomBytes } from 'node:crypto';
import type { Server as HttpServer, IncomingMessage } from 'node:http';
import type https from 'node:https';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { Server, type Socket } from 'socket.io';
import type { BusEvent } from '../../../core/events.ts';
import type { ConsumerOptions, EventBus } from '../../../core/ports.ts';
import type { Principal } from '../../../core/principal.ts';
import type { CredentialVerifier } from '../../../core/service-ports.ts';
import type { BusConsumer } from '../../../platform/module.ts';
import {
  adminRoom,
  type ConnectEvent,
  type ConnectFailure,
  canSee,
  isFileEvent,
  parseConnectPayload,
  refusalFor,
  roomOf,
  type Subscription,
  subscriptionFor,
  tokenExpiry,
  toNotification,
  userRoom,
} from '../domain/notifications.ts';

/**
 * The Socket.IO endpoint of the notifications service, on the gateway's HTTPS server.
 *
 * Live path: the bus consumer emits each file event once to the rooms allowed to see it
 * (the tenant's admin room and the owner's user room), so Socket.IO encodes it once.
 *
 * Replay (`since`): a socket that asks for history is not in its room yet. Live events for
 * it are buffered while the history is read from the outbox; then the buffer is flushed
 * without what the history already sent, and the socket receives events one by one until
 * the live consumer passes the last event the history sent; only then does it join its
 * room. So the seam has no gap and no duplicate, and events keep their order.
 * A replay is all or nothing: a backlog larger than `replayMax` is refused with
 * `replay_unavailable` before the ack (nothing sent), and a history that cannot be read to
 * its end after the ack (pruned under the replay, database down) ends the subscription
 * (`Subscription_end {code: 'replay_unavailable'}` and a disconnect) rather than go live
 * over a gap.
 *
 * What a client gets back, beyond the contract's connect acks:
 * - `User_connect` / `Admin_connect` answer through the ack function when the client sends one
 *   (also when it sends no payload at all: `emit('User_connect', ack)` answers
 *   `{ok: false, code: 'invalid_payload'}`); without an ack function the same answer comes
 *   as a `User_connect_ack` / `Admin_connect_ack` event, for tools that cannot send acks.
 * - Any other event with an ack function is answered `{ok: false, code}`, with a stable code:
 *   `forbidden` for `File_create` / `File_update` / `File_delete` (only the bus publishes
 *   those), `unknown_event` for anything else. Without an ack it is silently ignored.
 * - A subscription ends with a `Subscription_end` event `{code}` and a server disconnect:
 *   `token_expired` when the user token's `exp` passes, `unauthorized` when a re-check
 *   (every `recheckMs`) finds the credential revoked or its user deleted,
 *   `replay_unavailable` when a replay already under way cannot be completed.
 *
 * Handshake credentials (`auth: {key}` or `auth: {token}`, optionally with `since`) are the
 * same as the matching connect event sent at once: `{key}` is `Admin_connect` and `{token}`
 * is `User_connect`, whatever the token's role. So an admin user's token in the handshake
 * subscribes to that admin's own files, exactly as `User_connect` with it would; to see every
 * file of the tenant, the admin sends `Admin_connect {token}` (on the same socket, which
 * replaces the subscription). The answer comes as a `User_connect_ack` / `Admin_connect_ack`
 * event. Bad handshake credentials or payload refuse the connection (`connect_error` with
 * `data.code`); a `since` that cannot be replayed does not: the socket connects, unsubscribed,
 * gets `{ok: false, code: 'replay_unavailable'}`, and may connect again without `since`.
 */
export interface NotificationsOptions {
  bus: EventBus;
  verifiers: CredentialVerifier[];
  logger: Logger;
  metrics: Registry;
  corsOrigins: string[];
  /** A socket with no successful connect within this time is disconnected. */
  authTimeoutMs: number;
  /** How often a subscription's credential is checked again (revoked keys, deleted users). */
  recheckMs: number;
  /**
   * The most events a `since` replay sends (default 100,000). A larger backlog is refused
   * with `replay_unavailable` before anything is sent: a replay never stops half-way.
   */
  replayMax?: number;
}

interface CatchingUp {
  socket: Socket;
  subscription: Subscription;
  /** Event ids sent to this socket individually (history, flush, tail). */
  sent: Set<string>;
  /** Live events that arrived while the history was being read. */
  buffer: BusEvent[] | null;
  /** The last event sent individually (history, flush or tail). */
  lastSent: string | null;
  /** The last event the history sent: once the live consumer passes it, the socket joins its room. */
  joinAfter: string | null;
}

const REPLAY_PAGE = 500;
const REPLAY_MAX = 100_000;
const RECENT_MAX = 4096;

interface Backlog {
  /** Events after `since`, counted up to one past the cap. */
  count: number;
  /** The whole backlog when it fits one page (already read, so the replay starts with it). */
  firstPage: BusEvent[] | null;
}

/** What a subscription may replay: its tenant's events, and only the user's own for a user subscription. */
function replayFilter(subscription: Subscription) {
  return { tenantId: subscription.tenantId, ownerId: subscription.scope === 'user' ? subscription.userId : undefined };
}

/** A notifications instance alone (distributed mode): reached through the gateway only. */
export interface BehindGateway {
  /** True for a request the gateway signed. */
  admit(request: IncomingMessage): boolean;
  /** Starts every session id of this instance (`<prefix>.<random>`): the gateway routes by it. */
  sessionPrefix: string;
}

export class NotificationsHub {
  private io: Server | undefined;
  private readonly catchingUp = new Set<CatchingUp>();
  /** The latest events the live consumer has emitted (`liveKey`), oldest first: joins go by it, and a repeat is not emitted again. */
  private readonly recent: string[] = [];
  private readonly recentSet = new Set<string>();
  private readonly sockets: Gauge;
  private readonly deliveries: Counter;
  private readonly latency: Histogram;
  private readonly replayMax: number;

  constructor(private readonly options: NotificationsOptions) {
    this.replayMax = options.replayMax ?? REPLAY_MAX;
    const registers = [options.metrics];
    this.sockets = new Gauge({ name: 'bantu_notifications_sockets', help: 'Connected Socket.IO clients', registers });
    this.deliveries = new Counter({ name: 'bantu_notifications_deliveries_total', help: 'Notifications emitted to sockets', registers });
    this.latency = new Histogram({
      name: 'bantu_notifications_delivery_seconds',
      help: 'From the commit of a change to the emission of its notification',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
      registers,
    });
  }

  /**
   * The durable bus consumer, registered before the bus starts. `lowLatency`: an event
   * is handed over as soon as the bus learns of its commit where its order allows (the
   * outbox: from its commit's notification, with no read of the table in between), in the
   * order the read would have delivered it, which the replay seam relies on. Drivers with
   * no faster path ignore the option.
   */
  consumer(): BusConsumer {
    // Ephemeral: every notifications instance relays every event to its own sockets; history is read with `since`.
    const options: ConsumerOptions = { types: ['File_create', 'File_update', 'File_delete'], lowLatency: true, ephemeral: true };
    return { name: 'notifications', handle: async (event) => this.deliver(event), options };
  }

  attach(server: https.Server | HttpServer, behindGateway?: BehindGateway): void {
    const origins = this.options.corsOrigins;
    this.io = new Server(server, {
      path: '/socket.io/',
      // Socket.IO v3 clients speak v4's protocol (Engine.IO 4) and need nothing; this admits v2 clients (Engine.IO 3) too.
      allowEIO3: true,
      cors: { origin: origins.includes('*') ? true : origins, credentials: false },
      serveClient: false,
      connectTimeout: this.options.authTimeoutMs,
      // CORS headers alone only ask browsers to behave: refuse other origins outright.
      // Clients that send no Origin (servers, CLIs, mobile apps) are not browsers and pass.
      allowRequest: (request, callback) => {
        const origin = request.headers.origin;
        callback(null, origin === undefined || origins.includes('*') || origins.includes(origin));
      },
    });
    // Credentials in the handshake subscribe at once, as the connect event they stand for
    // (`{key}`: Admin_connect, `{token}`: User_connect, see above); bad ones are refused.
    this.io.use(async (socket, next) => {
      const auth = socket.handshake.auth as Record<string, unknown> | undefined;
      if (!auth || (auth.token === undefined && auth.key === undefined)) return next();
      const event: ConnectEvent = auth.key !== undefined ? 'Admin_connect' : 'User_connect';
      const result = await this.authenticate(event, auth).catch(() => ({ ok: false as const, code: 'unauthorized' as const }));
      if (!result.ok) return next(Object.assign(new Error(result.code), { data: { code: result.code } }));
      socket.data.pending = { event, payload: auth };
      next();
    });
    if (behindGateway) {
      // Every request (handshake, polling, upgrade) must come from the gateway; and every
      // session id names this instance, so the gateway sends a session's requests here.
      this.io.engine.use((request: IncomingMessage, _response: unknown, next: (error?: Error) => void) => {
        next(behindGateway.admit(request) ? undefined : new Error('not from the gateway'));
      });
      this.io.engine.generateId = () => `${behindGateway.sessionPrefix}.${randomBytes(15).toString('base64url')}`;
    }
    this.io.on('connection', (socket) => this.onConnection(socket));
  }

  /** Disconnects every socket. The gateway closes the HTTPS server itself. */
  async close(): Promise<void> {
    const io = this.io;
    if (!io) return;
    this.io = undefined;
    io.disconnectSockets(true);
    io.engine.close();
  }

  private onConnection(socket: Socket): void {
    this.sockets.inc();
    const timeout = setTimeout(() => {
      if (!socket.data.subscription) socket.disconnect(true);
    }, this.options.authTimeoutMs);
    socket.once('disconnect', () => {
      this.sockets.dec();
      clearTimeout(timeout);
      clearInterval(socket.data.recheck);
      clearTimeout(socket.data.expiry);
      for (const entry of this.catchingUp) if (entry.socket === socket) this.catchingUp.delete(entry);
    });

    // Socket.IO passes the ack function as the LAST argument: `emit('User_connect', ack)`
    // arrives as (ack), with no payload, and must still be answered through it.
    const onConnect = (event: ConnectEvent) => async (...args: unknown[]) => {
      const ack = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
      const payload = args[0];
      const answer = await this.subscribe(socket, event, payload).catch((error) => {
        this.options.logger.error({ err: error }, 'subscription failed');
        return { ok: false as const, code: 'unauthorized' as ConnectFailure };
      });
      if (typeof ack === 'function') ack(answer);
      else socket.emit(`${event}_ack`, answer); // tools that cannot send acks still see the answer
    };
    socket.on('User_connect', onConnect('User_connect'));
    socket.on('Admin_connect', onConnect('Admin_connect'));
    // Anything else a client emits, File_* included, changes nothing and reaches nobody.
    socket.onAny((event: string, ...args: unknown[]) => {
      if (event === 'User_connect' || event === 'Admin_connect') return;
      const ack = args[args.length - 1];
      if (typeof ack === 'function') ack({ ok: false, code: refusalFor(event) });
    });

    const pending = socket.data.pending as { event: ConnectEvent; payload: unknown } | undefined;
    if (pending) {
      void onConnect(pending.event)(pending.payload, (answer: unknown) => socket.emit(`${pending.event}_ack`, answer));
    }
  }

  private async authenticate(event: ConnectEvent, payload: unknown) {
    const request = parseConnectPayload(event, payload);
    if (!request) return { ok: false as const, code: 'invalid_payload' as ConnectFailure };
    // The token verifier tolerates some clock skew past `exp`; a subscription would end at
    // once anyway (see watchCredential), so an expired token is refused outright.
    const exp = tokenExpiry(request.credential);
    if (exp !== null && exp * 1000 <= Date.now()) return { ok: false as const, code: 'unauthorized' as ConnectFailure };
    const principal = await this.verify(request.credential);
    const subscription = principal ? subscriptionFor(event, principal) : null;
    if (!subscription) return { ok: false as const, code: 'unauthorized' as ConnectFailure };
    return { ok: true as const, request, subscription };
  }

  private async verify(credential: string): Promise<Principal | null> {
    for (const verifier of this.options.verifiers) {
      const principal = await verifier.verify(credential);
      if (principal) return principal;
    }
    return null;
  }

  private async subscribe(socket: Socket, event: ConnectEvent, payload: unknown) {
    const result = await this.authenticate(event, payload);
    if (!result.ok) return result;
    const { request, subscription } = result;
    let backlog: Backlog | null = null;
    if (request.since !== null) {
      backlog = await this.backlogOf(subscription, request.since);
      if (backlog === null) return { ok: false as const, code: 'replay_unavailable' as ConnectFailure };
      if (backlog.count > this.replayMax) {
        // Refused before anything is sent: a replay cut at the cap would skip what lies
        // between the cap and the live feed. The client resynchronises another way.
        this.options.logger.info({ since: request.since, cap: this.replayMax }, 'replay refused: the backlog exceeds the cap');
        return { ok: false as const, code: 'replay_unavailable' as ConnectFailure };
      }
    }

    this.unsubscribe(socket);
    socket.data.subscription = subscription;
    this.watchCredential(socket, request.credential);
    const ack = { ok: true as const, user_id: subscription.userId };
    if (request.since === null) {
      socket.join(roomOf(subscription));
      return ack;
    }
    // Live events are buffered from now on; the history is sent after the ack, so a client
    // that starts listening when it reads the ack misses nothing.
    const entry: CatchingUp = { socket, subscription, sent: new Set(), buffer: [], lastSent: null, joinAfter: null };
    this.catchingUp.add(entry);
    const since = request.since;
    const firstPage = (backlog as Backlog).firstPage;
    setImmediate(() => void this.replay(entry, since, firstPage));
    return ack;
  }

  /**
   * Counts the events a subscriber would replay after `since`, up to just past the cap;
   * null when `since` cannot be resumed from (unknown, pruned, another tenant's). A backlog
   * that fits one page is kept, for the replay to start with.
   */
  private async backlogOf(subscription: Subscription, since: string): Promise<Backlog | null> {
    let after = since;
    let count = 0;
    while (true) {
      const page = await this.options.bus.readSince(subscription.environment, after, REPLAY_PAGE, replayFilter(subscription));
      if (page === null) return null;
      const firstPage = count === 0 && page.length < REPLAY_PAGE ? page : null;
      for (const event of page) if (canSee(subscription, event)) count++;
      if (page.length < REPLAY_PAGE || count > this.replayMax) return { count, firstPage };
      after = (page[page.length - 1] as BusEvent).event_id;
    }
  }

  private unsubscribe(socket: Socket): void {
    for (const room of socket.rooms) if (room !== socket.id) socket.leave(room);
    for (const entry of this.catchingUp) if (entry.socket === socket) this.catchingUp.delete(entry);
    clearInterval(socket.data.recheck);
    clearTimeout(socket.data.expiry);
  }

  /** Expired, revoked or deleted credentials end the subscription. */
  private watchCredential(socket: Socket, credential: string): void {
    const end = (code: string) => {
      socket.emit('Subscription_end', { code });
      socket.disconnect(true);
    };
    const exp = tokenExpiry(credential);
    if (exp !== null) {
      const ms = exp * 1000 - Date.now();
      socket.data.expiry = setTimeout(() => end('token_expired'), Math.max(0, Math.min(ms, 2 ** 31 - 1)));
    }
    socket.data.recheck = setInterval(() => {
      this.verify(credential).then(
        (principal) => {
          if (!principal) end('unauthorized');
        },
        () => undefined,
      );
    }, this.options.recheckMs);
    socket.data.recheck.unref?.();
  }

  /**
   * Sends the history after `since` (starting with `firstPage` when the backlog count kept
   * it), then the buffered live events. It reads until the history is exhausted: the cap
   * was checked before the ack. If the history cannot be read to its end (pruned under it,
   * database down), the subscription ends with `replay_unavailable` instead of going live
   * over a gap.
   */
  private async replay(entry: CatchingUp, since: string, firstPage: BusEvent[] | null): Promise<void> {
    const { socket, subscription } = entry;
    let after = since;
    let prefetched = firstPage;
    try {
      while (true) {
        // The prefetched page was read before the live buffer started: read on after it anyway.
        const page = prefetched ?? (await this.options.bus.readSince(subscription.environment, after, REPLAY_PAGE, replayFilter(subscription)));
        const wasPrefetched = prefetched !== null;
        prefetched = null;
        if (!socket.connected || !this.catchingUp.has(entry)) return;
        if (page === null) return this.endReplay(entry, new Error(`${after} was pruned during the replay`));
        for (const event of page) this.sendOne(entry, event);
        if (page.length > 0) after = (page[page.length - 1] as BusEvent).event_id;
        if (page.length < REPLAY_PAGE && !wasPrefetched) break;
      }
    } catch (error) {
      return this.endReplay(entry, error);
    }
    if (!socket.connected || !this.catchingUp.has(entry)) return;
    // From here to the end of this function nothing awaits: no live event can slip between.
    const buffered = entry.buffer ?? [];
    entry.buffer = null;
    for (const event of buffered) this.sendOne(entry, event);
    const lastSent = entry.lastSent;
    if (lastSent === null || this.recentSet.has(liveKey(subscription.environment, lastSent))) this.join(entry);
    else entry.joinAfter = lastSent;
  }

  /** A replay that cannot be completed ends the subscription: never a silent gap. */
  private endReplay(entry: CatchingUp, error: unknown): void {
    if (!this.catchingUp.delete(entry)) return;
    this.options.logger.warn({ err: error }, 'replay could not be completed; the subscription ends with replay_unavailable');
    entry.socket.emit('Subscription_end', { code: 'replay_unavailable' });
    entry.socket.disconnect(true);
  }

  private join(entry: CatchingUp): void {
    this.catchingUp.delete(entry);
    entry.socket.join(roomOf(entry.subscription));
  }

  private sendOne(entry: CatchingUp, event: BusEvent): void {
    if (entry.sent.has(event.event_id) || !canSee(entry.subscription, event)) return;
    entry.sent.add(event.event_id);
    entry.lastSent = event.event_id;
    entry.socket.emit(`Notify_${event.type}`, toNotification(event));
    this.deliveries.inc();
  }

  /**
   * The bus consumer: one emission per event to every room allowed to see it. Delivery is at
   * least once (a relay that republished outside JetStream's duplicate window, a redelivery
   * after a crash): an event among the latest emitted is not emitted again.
   */
  private deliver(event: BusEvent): void {
    if (!isFileEvent(event.type)) return;
    const key = liveKey(event.environment, event.event_id);
    if (this.recentSet.has(key)) return;
    this.latency.observe(Math.max(0, Date.now() - Date.parse(event.occurred_at)) / 1000);
    const io = this.io;
    if (io) {
      const rooms = [adminRoom(event.environment, event.tenant_id)];
      if (event.owner_id) rooms.push(userRoom(event.environment, event.tenant_id, event.owner_id));
      let reach = 0;
      for (const room of rooms) reach += io.sockets.adapter.rooms.get(room)?.size ?? 0;
      if (reach > 0) {
        io.to(rooms).emit(`Notify_${event.type}`, toNotification(event));
        this.deliveries.inc(reach);
      }
    }
    for (const entry of this.catchingUp) {
      if (!canSee(entry.subscription, event)) continue;
      if (entry.buffer) {
        entry.buffer.push(event);
        continue;
      }
      // Tail: the live consumer is catching up with what the history sent. The history sent
      // every visible event up to its end, so a visible event it did not send is past the end.
      const isNew = !entry.sent.has(event.event_id);
      this.sendOne(entry, event);
      if (isNew || entry.joinAfter === event.event_id) this.join(entry);
    }
    this.remember(key);
  }

  private remember(key: string): void {
    this.recent.push(key);
    this.recentSet.add(key);
    if (this.recent.length > RECENT_MAX) this.recentSet.delete(this.recent.shift() as string);
  }
}

/** Event ids are per environment: a live event is known by both. */
function liveKey(environment: string, eventId: string): string {
  return `${environment}/${eventId}`;
}
