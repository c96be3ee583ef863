import { Svcm } from '@nats-io/services';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { RouteDescription } from '../gateway/routes.ts';
import type { ServiceName } from './catalogue.ts';
import type { InternalTokens } from './internal-token.ts';

/**
 * The registry of distributed mode, on NATS: each service instance registers with the NATS
 * service API (`$SRV.*`: name, version, instance id) and carries its address and route tags
 * in the metadata. The gateway asks every second who is there; an instance that misses
 * three questions in a row (about 3.5 s) is gone, a new one is seen at the next question.
 */
export interface ServiceInstance {
  id: string;
  service: ServiceName;
  /** Base URL the gateway reaches it at, e.g. http://10.0.0.7:41234 */
  address: string;
  version: string;
  keyId: string;
  routes: RouteDescription[];
  /** notifications: the prefix of this instance's Socket.IO session ids (sticky routing). */
  sessionPrefix?: string;
  /** What the announcement's signature covers, and the signature (checked by `ServiceRegistry`). */
  signedText?: string;
  signature?: string;
}

export interface Announcement {
  service: ServiceName;
  version: string;
  address: string;
  /** Fingerprint of the installation's BANTU_SECRET_KEY (never the key). */
  keyId: string;
  routes: RouteDescription[];
  sessionPrefix?: string;
}

export function registryName(prefix: string, service: ServiceName): string {
  return `${prefix}-${service}`;
}

/** What an announcement's signature covers: everything the gateway acts on. */
function signedText(service: string, metadata: Record<string, string | undefined>): string {
  return [service, metadata.address ?? '', metadata.session_prefix ?? '', metadata.routes ?? ''].join('\n');
}

/** Registers one instance; `stop` unregisters it (the gateway stops routing to it at its next question). */
export async function announce(
  nc: NatsConnection,
  prefix: string,
  announcement: Announcement,
  tokens: InternalTokens,
): Promise<{ id: string; stop(): Promise<void> }> {
  const metadata: Record<string, string> = {
    address: announcement.address,
    key_id: announcement.keyId,
    routes: JSON.stringify(announcement.routes),
    ...(announcement.sessionPrefix ? { session_prefix: announcement.sessionPrefix } : {}),
  };
  metadata.signature = tokens.signAnnouncement(signedText(announcement.service, metadata));
  const service = await new Svcm(nc as never).add({
    name: registryName(prefix, announcement.service),
    version: announcement.version,
    description: `Bantu ${announcement.service}`,
    metadata,
  });
  return { id: service.info().id, stop: () => service.stop().then(() => undefined) };
}

/** Every instance of these services that answers within `maxWaitMs`. */
export async function discover(nc: NatsConnection, prefix: string, services: readonly ServiceName[], maxWaitMs: number): Promise<ServiceInstance[]> {
  const client = new Svcm(nc as never).client({ maxWait: maxWaitMs, strategy: 'timer' });
  const found = await Promise.all(
    services.map(async (service) => {
      const instances: ServiceInstance[] = [];
      try {
        for await (const info of await client.info(registryName(prefix, service))) {
          const metadata = info.metadata ?? {};
          instances.push({
            id: info.id,
            service,
            address: metadata.address ?? '',
            version: info.version,
            keyId: metadata.key_id ?? '',
            routes: parseRoutes(metadata.routes),
            ...(metadata.session_prefix ? { sessionPrefix: metadata.session_prefix } : {}),
            signedText: signedText(service, metadata),
            signature: metadata.signature ?? '',
          });
        }
      } catch (error) {
        // No instance of that service: nobody answered. Anything else (NATS unreachable) is the caller's to see.
        if (!isNoResponders(error)) throw error;
      }
      return instances;
    }),
  );
  return found.flat();
}

function parseRoutes(text: string | undefined): RouteDescription[] {
  try {
    const routes = JSON.parse(text ?? '[]');
    return Array.isArray(routes) ? routes : [];
  } catch {
    return [];
  }
}

function isNoResponders(error: unknown): boolean {
  const e = error as { code?: string; name?: string; message?: string };
  return e?.code === '503' || e?.name === 'NoRespondersError' || /no responders/i.test(e?.message ?? '');
}

export interface RegistryOptions {
  prefix: string;
  /** The installation's key: an instance whose announcement it did not sign is never routed to. */
  tokens: InternalTokens;
  services: readonly ServiceName[];
  logger: Logger;
  pollMs?: number;
  maxWaitMs?: number;
  /** Questions an instance may miss in a row before it counts as gone. */
  missesAllowed?: number;
}

/**
 * The gateway's live view of the registry: the instances of each service, and the routes
 * each service announced (kept when its last instance goes, so its routes answer 503, not 404).
 */
export class ServiceRegistry {
  private readonly live = new Map<string, { instance: ServiceInstance; misses: number }>();
  private readonly knownRoutes = new Map<ServiceName, RouteDescription[]>();
  private readonly rejected = new Set<string>();
  private readonly listeners: Array<() => void> = [];
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  /** While the NATS connection is down, no answer means nothing: nobody counts as gone. */
  private disconnected = false;
  private readonly pollMs: number;
  private readonly maxWaitMs: number;
  private readonly missesAllowed: number;

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: RegistryOptions,
  ) {
    this.pollMs = options.pollMs ?? 1000;
    this.maxWaitMs = options.maxWaitMs ?? 500;
    this.missesAllowed = options.missesAllowed ?? 2;
  }

  /** The first look completes before it resolves, so a gateway starts with what is there. */
  async start(): Promise<void> {
    this.followConnection();
    await this.poll();
    const tick = () => {
      this.polling = this.poll()
        .catch((error) => this.options.logger.error({ err: error }, 'registry: poll failed'))
        .finally(() => {
          if (this.timer) this.timer = setTimeout(tick, this.pollMs);
        });
    };
    this.timer = setTimeout(tick, this.pollMs);
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.polling;
  }

  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  instances(service: ServiceName): ServiceInstance[] {
    const out: ServiceInstance[] = [];
    for (const { instance } of this.live.values()) if (instance.service === service) out.push(instance);
    return out;
  }

  /** Live instance count of every service, for /readyz. */
  counts(): Record<ServiceName, number> {
    const counts = Object.fromEntries(this.options.services.map((s) => [s, 0])) as Record<ServiceName, number>;
    for (const { instance } of this.live.values()) counts[instance.service] += 1;
    return counts;
  }

  routes(): ReadonlyMap<ServiceName, RouteDescription[]> {
    return this.knownRoutes;
  }

  /** Services this gateway has never heard of: paths no known route matches may be theirs. */
  unseen(): ServiceName[] {
    return this.options.services.filter((s) => !this.knownRoutes.has(s));
  }

  /** A connection to it could not be made: stop routing to it until it answers the registry again. */
  suspect(instanceId: string): void {
    if (this.live.delete(instanceId)) this.changed();
  }

  private followConnection(): void {
    (async () => {
      for await (const status of this.nc.status()) {
        if (status.type === 'disconnect') this.disconnected = true;
        else if (status.type === 'reconnect') this.disconnected = false;
      }
    })().catch(() => undefined);
  }

  private async poll(): Promise<void> {
    if (this.nc.isClosed() || this.disconnected) return;
    let found: ServiceInstance[];
    try {
      found = await discover(this.nc, this.options.prefix, this.options.services, this.maxWaitMs);
    } catch (error) {
      this.options.logger.warn({ err: error }, 'registry: cannot ask NATS; keeping the last known instances');
      return;
    }
    // NATS went away during the question: its silence says nothing about the instances.
    if (this.disconnected) return;
    let changed = false;
    const answered = new Set<string>();
    for (const instance of found) {
      if (!this.admissible(instance)) continue;
      answered.add(instance.id);
      const entry = this.live.get(instance.id);
      if (entry) {
        entry.misses = 0;
        entry.instance = instance;
      } else {
        this.live.set(instance.id, { instance, misses: 0 });
        this.options.logger.info({ upstream: instance.service, instance: instance.id, address: instance.address }, 'registry: instance joined');
        changed = true;
      }
    }
    for (const [id, entry] of this.live) {
      if (answered.has(id)) continue;
      entry.misses += 1;
      if (entry.misses > this.missesAllowed) {
        this.live.delete(id);
        this.options.logger.warn({ upstream: entry.instance.service, instance: id }, 'registry: instance stopped answering; no more traffic to it');
        changed = true;
      }
    }
    if (this.refreshRoutes()) changed = true;
    if (changed) this.changed();
  }

  /** Signed with the installation's key, and with an address the gateway can call. */
  private admissible(instance: ServiceInstance): boolean {
    const signed = instance.signedText !== undefined && this.options.tokens.verifyAnnouncement(instance.signedText, instance.signature ?? '');
    let reason: string | undefined;
    if (!signed) {
      reason = instance.keyId === this.options.tokens.keyId() ? 'its announcement is not signed by this installation' : 'it runs with another BANTU_SECRET_KEY';
    } else if (!validAddress(instance.address)) reason = `its address is not an http:// URL: ${instance.address}`;
    if (!reason) return true;
    if (!this.rejected.has(instance.id)) {
      this.rejected.add(instance.id);
      this.options.logger.error({ upstream: instance.service, instance: instance.id, address: instance.address }, `registry: an instance gets no traffic: ${reason}`);
    }
    return false;
  }

  /**
   * Each service's routes: those its live instances announce, all of them (during an upgrade
   * two versions may announce different ones); kept when its last instance goes, so its
   * routes answer 503 rather than 404.
   */
  private refreshRoutes(): boolean {
    const union = new Map<ServiceName, Map<string, RouteDescription>>();
    for (const { instance } of this.live.values()) {
      const routes = union.get(instance.service) ?? new Map<string, RouteDescription>();
      for (const route of instance.routes) routes.set(`${route.method} ${route.at} ${route.url}`, route);
      union.set(instance.service, routes);
    }
    let changed = false;
    for (const [service, routes] of union) {
      const next = [...routes.values()];
      if (JSON.stringify(this.knownRoutes.get(service)) !== JSON.stringify(next)) {
        this.knownRoutes.set(service, next);
        changed = true;
      }
    }
    return changed;
  }

  private changed(): void {
    for (const listener of this.listeners) {
      try {
        listener();
      } catch (error) {
        this.options.logger.error({ err: error }, 'registry: a change listener failed');
      }
    }
  }
}

function validAddress(address: string): boolean {
  try {
    return new URL(address).protocol === 'http:';
  } catch {
    return false;
  }
}
