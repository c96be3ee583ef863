import { randomBytes } from 'node:crypto';
import { after, before } from 'node:test';
import { dropDatabases, ENVIRONMENTS, migrate, openDatabases } from '../src/adapters/db/pg.ts';
import { migrationPlan } from '../src/platform/platform.ts';
import { backupRepositoryContract } from '../src/services/backup/domain/backup.repository.contract.ts';
import { backupMigrations } from '../src/services/backup/plugin.ts';
import { PgBackupRepository } from '../src/services/backup/repo/backup.repo.ts';
import { startServer, type TestServer } from './helpers/server.ts';

/**
 * The BackupRepository contract on PostgreSQL (the test server's: embedded, or the machine's
 * with BANTU_TEST_DATABASE_URL), the same suite the unit tests' in-memory fake passes. Each
 * test gets databases of its own with only the platform's and the backup's migrations, so that
 * the cross-tenant answers (policies, blobs, totals) see nothing but the test's entries.
 */
const plan = migrationPlan([backupMigrations]).environment;

let server: TestServer;
before(async () => {
  server = await startServer();
});
after(async () => server?.close());

backupRepositoryContract('postgres', {
  async open() {
    const base = server.app.databases.controlUrl;
    const name = `backup_contract_${randomBytes(4).toString('hex')}`;
    const databases = await openDatabases(base, name);
    await Promise.all(ENVIRONMENTS.map((environment) => migrate(databases.environments[environment], plan)));
    return {
      repository: new PgBackupRepository(databases),
      async close() {
        await databases.close();
        await dropDatabases(base, name);
      },
    };
  },
});
