import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Databases, MigrationSet } from '../../adapters/db/pg.ts';
import type { CredentialVerifier } from '../../gateway/auth.ts';
import type { RoutesPlugin } from '../../gateway/server.ts';
import { ApiKeysService } from './domain/api-keys.service.ts';
import { TenantsService } from './domain/tenants.service.ts';
import { tenantsRoutes } from './http/tenants.routes.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Identity: tenants, API keys (and, with the identity issue, users and tokens). */
export const identityMigrations = {
  control: [{ service: 'identity', folder: path.join(here, 'migrations', 'control') }] as MigrationSet[],
  environment: [{ service: 'identity', folder: path.join(here, 'migrations', 'environment') }] as MigrationSet[],
};

export interface IdentityService {
  tenants: TenantsService;
  apiKeys: ApiKeysService;
  verifiers: CredentialVerifier[];
  routes: RoutesPlugin[];
}

export function createIdentityService(deps: { databases: Databases }): IdentityService {
  const apiKeys = new ApiKeysService(deps.databases);
  const tenants = new TenantsService(deps.databases, apiKeys);
  return {
    tenants,
    apiKeys,
    verifiers: [{ verify: (credential) => apiKeys.verify(credential) }],
    routes: [tenantsRoutes(tenants)],
  };
}
