/**
 * The services `bantu serve <name>` can run, one per process (distributed mode). `bantu start`
 * mounts all of them in one process.
 */
export const SERVICE_NAMES = ['gateway', 'identity', 'files', 'notifications', 'backup', 'exports', 'webhooks'] as const;

export type ServiceName = (typeof SERVICE_NAMES)[number];

export function isServiceName(name: string): name is ServiceName {
  return (SERVICE_NAMES as readonly string[]).includes(name);
}
