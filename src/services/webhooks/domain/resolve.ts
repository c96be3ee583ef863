import { lookup } from 'node:dns/promises';
import { ipLiteralOf } from './address-safety.ts';

/** Every address a host name resolves to (as the system resolver answers connects), or [] when it does not resolve. */
export type Resolver = (hostname: string) => Promise<string[]>;

export const systemResolver: Resolver = async (hostname) => {
  try {
    return (await lookup(hostname, { all: true, verbatim: true })).map((entry) => entry.address);
  } catch {
    return [];
  }
};

/** The addresses a URL would reach: its IP literal, or what its name resolves to. */
export async function addressesOf(url: URL, resolve: Resolver): Promise<string[]> {
  const literal = ipLiteralOf(url);
  return literal ? [literal] : resolve(url.hostname);
}
