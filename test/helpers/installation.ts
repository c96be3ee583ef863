import { randomBytes } from 'node:crypto';
import { dropDatabases } from '../../src/adapters/db/pg.ts';
import { startServer, type TestServer } from './server.ts';

/**
 * Several Bantu processes of one installation, as distributed mode runs them: one PostgreSQL
 * database of their own on the machine's server (BANTU_TEST_DATABASE_URL, else
 * postgres://postgres@127.0.0.1:5432), one secret key, one public URL (the tokens' issuer),
 * and whatever `env` adds (REDIS_URL and its prefix). Each keeps its own data dir.
 */
export interface Installation {
  servers: TestServer[];
  close(): Promise<void>;
}

export async function startInstallation(count: number, env: Record<string, string>): Promise<Installation> {
  const base = new URL(process.env.BANTU_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres');
  base.pathname = `/bantu_i_${randomBytes(5).toString('hex')}`;
  const databaseUrl = base.toString();
  const shared = {
    DATABASE_URL: databaseUrl,
    BANTU_SECRET_KEY: randomBytes(32).toString('base64url'),
    BANTU_PUBLIC_URL: 'https://bantu.invalid',
    ...env,
  };
  const servers: TestServer[] = [];
  const close = async () => {
    for (const server of servers.reverse()) await server.close();
    await dropDatabases(databaseUrl);
  };
  try {
    // One after the other: the first makes the default tenant and the signing keys.
    for (let i = 0; i < count; i++) servers.push(await startServer(shared, { sameInstallationAs: servers[0] }));
  } catch (error) {
    await close();
    throw error;
  }
  return { servers: [...servers], close };
}
