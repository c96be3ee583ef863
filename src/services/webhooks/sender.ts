import { lookup as dnsLookup } from 'node:dns';
import { EventEmitter } from 'node:events';
import type { LookupFunction } from 'node:net';
import { Agent, request } from 'undici';
import { type AllowedNetworks, ipLiteralOf, judgeAddress } from './domain/address-safety.ts';

/**
 * Sends one webhook attempt with undici: no redirects followed, a deadline on the whole
 * attempt, at most RESPONSE_BYTES of the answer read. The address rule is applied again to
 * the address actually connected to (a name that resolved to a public address at
 * registration may resolve to a private one now: DNS rebinding), through the connect lookup
 * hook, so the check and the connection use the same answer.
 */
const RESPONSE_BYTES = 4096;
/** URLs whose scheme and literal-address verdict are kept (one per endpoint in use). */
const TARGETS_KEPT = 1024;

interface Target {
  scheme: 'http' | 'https';
  refused: string | null;
}

export interface AttemptResult {
  ok: boolean;
  status: number | null;
  error: string | null;
  durationMs: number;
}

/** Resolves like dns.lookup; `permit` decides each address. Exported for its tests. */
export function guardedLookup(permit: (address: string) => boolean, resolve: LookupFunction = dnsLookup): LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, { ...options, all: true }, (error, addresses) => {
      if (error) return callback(error, '', 4);
      const list = addresses as unknown as Array<{ address: string; family: number }>;
      const refused = list.find((entry) => !permit(entry.address));
      if (refused || list.length === 0) {
        const reason = Object.assign(new Error(`refused address ${refused?.address ?? '(none)'} for ${hostname}: not a public address`), { code: 'EADDRREFUSED' });
        return callback(reason, '', 4);
      }
      if (options.all) return (callback as unknown as (e: null, a: typeof list) => void)(null, list);
      const first = list[0] as { address: string; family: number };
      callback(null, first.address, first.family);
    });
  };
}

export class WebhookSender {
  /** https reaches public or allowed addresses; plain http only allowed ones. */
  private readonly agents: { https: Agent; http: Agent };
  private readonly targets = new Map<string, Target>();

  constructor(
    private readonly allowed: AllowedNetworks,
    private readonly timeoutMs: number,
    resolve?: LookupFunction,
  ) {
    const agent = (permit: (address: string) => boolean) =>
      new Agent({ connect: { lookup: guardedLookup(permit, resolve), timeout: timeoutMs }, keepAliveTimeout: 4000, connections: 64 });
    this.agents = {
      https: agent((address) => judgeAddress(address, allowed) !== 'denied'),
      http: agent((address) => judgeAddress(address, allowed) === 'allowed'),
    };
  }

  async send(url: string, headers: Record<string, string>, body: string): Promise<AttemptResult> {
    const started = performance.now();
    const took = () => Math.round(performance.now() - started);
    const target = this.targetOf(url);
    if (target.refused) return { ok: false, status: null, error: target.refused, durationMs: took() };
    // The deadline of the whole attempt (a slow trickle of an answer included). undici takes an
    // EventEmitter as its signal: a fifth of the cost of an AbortController per attempt.
    const deadline = new EventEmitter();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      deadline.emit('abort');
    }, this.timeoutMs);
    try {
      const response = await request(url, {
        method: 'POST',
        dispatcher: this.agents[target.scheme],
        headers: { 'content-type': 'application/json', 'user-agent': 'Bantu-Webhooks/1', ...headers },
        body,
        signal: deadline,
      });
      // At most RESPONSE_BYTES are read; with more coming, the connection is dropped.
      await response.body.dump({ limit: RESPONSE_BYTES });
      // An answer cut off by the deadline ends the dump quietly: it is still a timeout.
      if (timedOut) return { ok: false, status: null, error: `timed out after ${this.timeoutMs} ms`, durationMs: took() };
      const ok = response.statusCode >= 200 && response.statusCode < 300;
      const error = ok ? null : response.statusCode >= 300 && response.statusCode < 400 ? `redirect not followed (${response.statusCode})` : `answered ${response.statusCode}`;
      return { ok, status: response.statusCode, error, durationMs: took() };
    } catch (error) {
      return { ok: false, status: null, error: timedOut ? `timed out after ${this.timeoutMs} ms` : describe(error, this.timeoutMs), durationMs: took() };
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The scheme of a URL and, when its host is an IP literal the rule refuses, why (a literal is
   * connected to without a lookup, so the lookup hook never judges it). Kept per URL: the rule
   * does not change while the process runs, and judging costs more than the rest of an attempt.
   */
  private targetOf(url: string): Target {
    const known = this.targets.get(url);
    if (known) return known;
    const parsed = new URL(url);
    const scheme = parsed.protocol === 'http:' ? 'http' : 'https';
    const literal = ipLiteralOf(parsed);
    const verdict = literal ? judgeAddress(literal, this.allowed) : null;
    const refused = verdict === 'denied' || (literal && scheme === 'http' && verdict !== 'allowed') ? `refused address ${literal}: not a public address` : null;
    if (this.targets.size >= TARGETS_KEPT) this.targets.clear();
    const target = { scheme, refused } as const;
    this.targets.set(url, target);
    return target;
  }

  async close(): Promise<void> {
    await Promise.all([this.agents.https.close(), this.agents.http.close()]);
  }
}

function describe(error: unknown, timeoutMs: number): string {
  const e = error as { name?: string; code?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.code === 'UND_ERR_HEADERS_TIMEOUT' || e?.code === 'UND_ERR_BODY_TIMEOUT') return `timed out after ${timeoutMs} ms`;
  const code = e?.code ?? e?.cause?.code;
  const message = e?.cause?.message ?? e?.message ?? 'request failed';
  return (code ? `${code}: ${message}` : message).slice(0, 300);
}
