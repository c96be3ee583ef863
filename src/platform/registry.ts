import { Svcm } from '@nats-io/services';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { RouteDescription } from '../gateway/routes.ts';
import type { ServiceName } from './catalogue.ts';

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

/** Registers one instance; `stop` unregisters it (the gateway stops routing to it at its next question). */
export async function announce(nc: NatsConnection, prefix: string, announcement: Announcement): Promise<{ id: string; stop(): Promise<void> }> {
  const service = await new Svcm(nc as never).add({
    name: registryName(prefix, announcement.service),
    version: announcement.version,
    description: `Bantu ${announcement.service}`,
    metadata: {
      address: announcement.address,
      key_id: announcement.keyId,
      routes: JSON.stringify(announcement.routes),
      ...(announcement.sessionPrefix ? { session_prefix: announcement.sessionPrefix } : {}),
    },
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
  /** This installation's key fingerprint: an instance with another one is never routed to. */
  keyId: string;
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
    await this.poll();
    const tick = () => {
      this.polling = this.poll().finally(() => {
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

  /** A connection to it failed: stop routing to it until it answers the registry again. */
  suspect(instanceId: string): void {
    if (this.live.delete(instanceId)) this.changed();
  }

  private async poll(): Promise<void> {
    if (this.nc.isClosed()) return;
    let found: ServiceInstance[];
    try {
      found = await discover(this.nc, this.options.prefix, this.options.services, this.maxWaitMs);
    } catch (error) {
      // NATS itself is away: keep routing to what was there (failed connections still drop instances).
      this.options.logger.warn({ err: error }, 'registry: cannot ask NATS; keeping the last known instances');
      return;
    }
    let changed = false;
    const answered = new Set<string>();
    for (const instance of found) {
      if (instance.keyId !== this.options.keyId) {
        if (!this.rejected.has(instance.id)) {
          this.rejected.add(instance.id);
          this.options.logger.error(
            { upstream: instance.service, instance: instance.id, address: instance.address },
            'registry: an instance runs with another BANTU_SECRET_KEY; it gets no traffic',
          );
        }
        continue;
      }
      answered.add(instance.id);
      const entry = this.live.get(instance.id);
      if (entry) entry.misses = 0;
      else {
        this.live.set(instance.id, { instance, misses: 0 });
        this.options.logger.info({ upstream: instance.service, instance: instance.id, address: instance.address }, 'registry: instance joined');
        changed = true;
      }
      if (JSON.stringify(this.knownRoutes.get(instance.service)) !== JSON.stringify(instance.routes)) {
        this.knownRoutes.set(instance.service, instance.routes);
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
    if (changed) this.changed();
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }
}
