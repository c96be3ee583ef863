import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { type Dispatcher, Pool } from 'undici';
import { AppError, Errors, errorDefinition, type FieldError } from '../core/errors.ts';
import type { Principal } from '../core/principal.ts';
import { injectTraceparent, traceOf } from '../core/trace.ts';
import { SERVICE_NAMES, type ServiceName } from './catalogue.ts';
import { INTERNAL_HEADER, type InternalTokens } from './internal-token.ts';
import type { ServiceInstance } from './registry.ts';

/**
 * One service calling another in distributed mode: over HTTP to a live instance found in the
 * registry, signed like the gateway's requests (on behalf of `principal`), so the callee
 * applies its own rules to that principal. A refused connection (an instance just gone) is
 * tried once more on another instance; problems come back as the AppErrors they stand for.
 */
export interface ServiceCall {
  method: Dispatcher.HttpMethod;
  /** Path and query, e.g. `/v1/files?limit=200`. */
  path: string;
  principal: Principal | null;
  headers?: Record<string, string>;
  /** A body makes the call unrepeatable: it is never retried. */
  body?: Readable | null;
}

export interface InstanceDirectory {
  instances(service: ServiceName): ServiceInstance[];
  suspect(instanceId: string): void;
  onChange(listener: () => void): void;
}

export class ServiceClient {
  private readonly pools = new Map<string, Pool>();
  private turn = 0;

  constructor(
    private readonly directory: InstanceDirectory,
    private readonly tokens: InternalTokens,
  ) {
    directory.onChange(() => this.closeGonePools());
  }

  /** The answer as it came, whatever its status. */
  async call(service: ServiceName, call: ServiceCall): Promise<Dispatcher.ResponseData> {
    const tried = new Set<string>();
    for (;;) {
      const candidates = this.directory.instances(service).filter((instance) => !tried.has(instance.id));
      const instance = candidates[this.turn++ % Math.max(candidates.length, 1)];
      if (!instance) throw new AppError(Errors.unavailable, `No instance of ${service} is running`, { headers: { 'Retry-After': '1' } });
      tried.add(instance.id);
      const headers: Record<string, string> = {
        ...call.headers,
        [INTERNAL_HEADER]: this.tokens.sign({ principal: call.principal, requestId: randomUUID(), method: call.method, url: call.path, audience: 'service' }),
      };
      injectTraceparent(headers, traceOf(call.principal));
      try {
        return await this.pool(instance.address).request({ method: call.method, path: call.path, headers, body: call.body ?? null });
      } catch (error) {
        const refused = (error as NodeJS.ErrnoException).code === 'ECONNREFUSED';
        if (refused) this.directory.suspect(instance.id);
        if (!(refused && !call.body && tried.size < 2)) throw new AppError(Errors.upstreamFailed, `The ${service} service failed to answer`, { cause: error });
      }
    }
  }

  /** A JSON answer of a 2xx status (undefined for 204); any other status throws its problem as an AppError. */
  async json<T>(service: ServiceName, call: ServiceCall): Promise<T> {
    const answer = await this.call(service, call);
    if (answer.statusCode >= 200 && answer.statusCode < 300) {
      if (answer.statusCode === 204) {
        await answer.body.dump();
        return undefined as T;
      }
      return (await answer.body.json()) as T;
    }
    throw await problemError(answer);
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((pool) => pool.close()));
  }

  /** An instance gone from the registry: its pool closes once its calls in flight have ended. */
  private closeGonePools(): void {
    const live = new Set(SERVICE_NAMES.flatMap((service) => this.directory.instances(service).map((instance) => instance.address)));
    for (const [address, pool] of this.pools) {
      if (live.has(address)) continue;
      this.pools.delete(address);
      pool.close().catch(() => undefined);
    }
  }

  private pool(address: string): Pool {
    let pool = this.pools.get(address);
    if (!pool) {
      pool = new Pool(address, { connections: 16, keepAliveTimeout: 10_000, connect: { timeout: 2_000 } });
      this.pools.set(address, pool);
    }
    return pool;
  }
}

/** The AppError a problem+json answer stands for (its code, when it is one of ours). */
export async function problemError(answer: Dispatcher.ResponseData): Promise<AppError> {
  const problem = (await answer.body.json().catch(() => ({}))) as { code?: string; detail?: string; errors?: FieldError[] };
  const definition = (problem.code && errorDefinition(problem.code)) || Errors.upstreamFailed;
  return new AppError(definition, problem.detail ?? `status ${answer.statusCode}`, { errors: problem.errors });
}
