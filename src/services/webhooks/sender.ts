import { lookup as dnsLookup } from 'node:dns';
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
    const target = new URL(url);
    const scheme = target.protocol === 'http:' ? 'http' : 'https';
    // A literal address is connected to without a lookup: judge it here.
    const literal = ipLiteralOf(target);
    if (literal) {
      const verdict = judgeAddress(literal, this.allowed);
      if (verdict === 'denied' || (scheme === 'http' && verdict !== 'allowed')) {
        return { ok: false, status: null, error: `refused address ${literal}: not a public address`, durationMs: took() };
      }
    }
    try {
      const response = await request(target, {
        method: 'POST',
        dispatcher: this.agents[scheme],
        headers: { 'content-type': 'application/json', 'user-agent': 'Bantu-Webhooks/1', ...headers },
        body,
        signal: AbortSignal.timeout(this.timeoutMs),
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
      });
      await readBounded(response.body);
      const ok = response.statusCode >= 200 && response.statusCode < 300;
      const error = ok ? null : response.statusCode >= 300 && response.statusCode < 400 ? `redirect not followed (${response.statusCode})` : `answered ${response.statusCode}`;
      return { ok, status: response.statusCode, error, durationMs: took() };
    } catch (error) {
      return { ok: false, status: null, error: describe(error, this.timeoutMs), durationMs: took() };
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.agents.https.close(), this.agents.http.close()]);
  }
}

/** Reads at most RESPONSE_BYTES, then drops the rest (and the connection with it when more was coming). */
async function readBounded(body: AsyncIterable<Buffer> & { destroy(): void }): Promise<void> {
  let read = 0;
  for await (const chunk of body) {
    read += chunk.length;
    if (read >= RESPONSE_BYTES) {
      body.destroy();
      return;
    }
  }
}

function describe(error: unknown, timeoutMs: number): string {
  const e = error as { name?: string; code?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.code === 'UND_ERR_HEADERS_TIMEOUT' || e?.code === 'UND_ERR_BODY_TIMEOUT') return `timed out after ${timeoutMs} ms`;
  const code = e?.code ?? e?.cause?.code;
  const message = e?.cause?.message ?? e?.message ?? 'request failed';
  return (code ? `${code}: ${message}` : message).slice(0, 300);
}
