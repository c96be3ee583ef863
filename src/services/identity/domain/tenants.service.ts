import type { Databases } from '../../../adapters/db/pg.ts';
import { ENVIRONMENTS, withTenant } from '../../../adapters/db/pg.ts';
import { AppError, Errors } from '../../../core/errors.ts';
import { newId } from '../../../core/ids.ts';
import type { Environment } from '../../../core/principal.ts';
import * as tenantsRepo from '../repo/tenants.repo.ts';
import type { ApiKeysService } from './api-keys.service.ts';

export interface TenantKeys {
  live: { account_key: string; application_key: string };
  test: { account_key: string; application_key: string };
}

export interface CreatedTenant {
  id: string;
  name: string;
  created_at: string;
  keys: TenantKeys;
}

export interface Tenant {
  id: string;
  name: string;
  created_at: string;
}

const toTenant = (row: tenantsRepo.TenantRow): Tenant => ({ id: row.id, name: row.name, created_at: row.created_at.toISOString() });

/**
 * Tenants: one per client company. Creating one records it in the control database and
 * makes its first account and application key in each environment's own database.
 */
export class TenantsService {
  constructor(
    private readonly databases: Databases,
    private readonly apiKeys: ApiKeysService,
  ) {}

  async create(name: string): Promise<CreatedTenant> {
    const row = await tenantsRepo.insertTenant(this.databases.control, { id: newId('ten'), name });
    if (!row) throw new AppError(Errors.conflict, `A tenant named "${name}" already exists`);
    try {
      const keys = {} as TenantKeys;
      for (const environment of ENVIRONMENTS) keys[environment] = await this.firstKeys(row.id, environment);
      return { ...toTenant(row), keys };
    } catch (error) {
      // The environments are separate databases: undo the tenant rather than leave it keyless.
      await tenantsRepo.deleteTenant(this.databases.control, row.id).catch(() => undefined);
      throw error;
    }
  }

  private async firstKeys(tenantId: string, environment: Environment) {
    return withTenant(this.databases.environments[environment], tenantId, async (trx) => {
      const account = await this.apiKeys.createIn(trx, { tenantId, environment, kind: 'account', name: 'Default account key', scopes: [] });
      const application = await this.apiKeys.createIn(trx, { tenantId, environment, kind: 'application', name: 'Default application key', scopes: [] });
      return { account_key: account.key, application_key: application.key };
    });
  }

  async list(limit: number, before?: string): Promise<{ rows: Tenant[]; more: boolean }> {
    const rows = await tenantsRepo.listTenants(this.databases.control, limit + 1, before);
    return { rows: rows.slice(0, limit).map(toTenant), more: rows.length > limit };
  }

  async findByName(name: string): Promise<Tenant | null> {
    const row = await tenantsRepo.findTenantByName(this.databases.control, name);
    return row ? toTenant(row) : null;
  }
}
