import { BlockList, isIP } from 'node:net';

/**
 * Server-side request forgery guard. A webhook URL may only reach public addresses: never
 * loopback, private, carrier-grade NAT, link-local (cloud metadata lives there: 169.254.169.254,
 * fd00:ec2::254), unique-local, multicast or reserved ones, unless the address is inside one of
 * the operator's allowed networks (BANTU_WEBHOOK_ALLOWED_NETWORKS), which also admits plain http.
 * The same rule runs at registration and on the address actually connected to at delivery.
 */
const DENIED_V4: Array<[string, number]> = [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
];
const DENIED_V6: Array<[string, number]> = [
  ['::', 128],
  ['::1', 128],
  // IPv4-compatible, NAT64 and 6to4 forms embed an IPv4 address that may be a private one.
  ['::', 96],
  ['64:ff9b::', 96],
  ['2002::', 16],
  ['100::', 64],
  ['2001:db8::', 32],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
];

const denied = new BlockList();
for (const [network, prefix] of DENIED_V4) denied.addSubnet(network, prefix, 'ipv4');
for (const [network, prefix] of DENIED_V6) denied.addSubnet(network, prefix, 'ipv6');

/** Parses `a.b.c.d/n, x::/n` (a bare address counts as one host); throws on anything else. */
export function parseNetworks(list: string): AllowedNetworks {
  const allowed = new BlockList();
  const cidrs: string[] = [];
  for (const entry of list.split(',').map((s) => s.trim()).filter(Boolean)) {
    const [address = '', prefixText] = entry.split('/');
    const family = isIP(address);
    if (family === 0) throw new Error(`not a CIDR: ${entry}`);
    const max = family === 4 ? 32 : 128;
    const prefix = prefixText === undefined ? max : Number(prefixText);
    if (!/^\d+$/.test(prefixText ?? String(max)) || prefix > max) throw new Error(`not a CIDR: ${entry}`);
    allowed.addSubnet(address, prefix, family === 4 ? 'ipv4' : 'ipv6');
    cidrs.push(entry);
  }
  return { list: allowed, cidrs };
}

export interface AllowedNetworks {
  list: BlockList;
  cidrs: string[];
}

export const NO_ALLOWED_NETWORKS: AllowedNetworks = { list: new BlockList(), cidrs: [] };

export type AddressVerdict = 'public' | 'allowed' | 'denied';

/** What the rule says of one IP address (v4 or v6, IPv4-mapped v6 judged as its v4). */
export function judgeAddress(address: string, allowed: AllowedNetworks): AddressVerdict {
  const unbracketed = address.replace(/^\[|\]$/g, '');
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(unbracketed);
  const ip = mapped?.[1] ?? unbracketed;
  const family = isIP(ip);
  if (family === 0) return 'denied';
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (allowed.list.check(ip, type)) return 'allowed';
  return denied.check(ip, type) ? 'denied' : 'public';
}

/** Why a URL is refused, or null when every address it resolves to may be reached with its scheme. */
export function judgeUrl(url: URL, addresses: string[], allowed: AllowedNetworks): string | null {
  if (addresses.length === 0) return 'its host does not resolve';
  const verdicts = addresses.map((address) => judgeAddress(address, allowed));
  if (verdicts.includes('denied')) return 'its host resolves to a loopback, private, link-local or otherwise non-public address';
  if (url.protocol === 'http:' && !verdicts.every((v) => v === 'allowed')) return 'it must use https';
  return null;
}

/** The URL's host as an IP literal, or null when it is a name. */
export function ipLiteralOf(url: URL): string | null {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return isIP(host) ? host : null;
}
