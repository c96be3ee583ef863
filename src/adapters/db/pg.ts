import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Kysely, PostgresDialect, type RawBuilder, sql, type Transaction } from 'kysely';
import pg from 'pg';
import type { Environment } from '../../core/principal.ts';

// BIGINT (int8) columns come back as JS numbers: our counters and sizes stay far below 2^53.
pg.types.setTypeParser(20, (value) => Number.parseInt(value, 10));

/**
 * PostgreSQL access shared by both shapes (the embedded server is real PostgreSQL).
 *
 * One control database holds what spans environments (tenants); each environment,
 * `live` and `test`, has a database of its own, so the two never share a table.
 * Given a base URL naming database `bantu`, they are `bantu`, `bantu_live`, `bantu_test`.
 */
// biome-ignore lint/suspicious/noExplicitAny: each service types its own tables
export type Db = Kysely<any>;
// biome-ignore lint/suspicious/noExplicitAny: as above
export type Tx = Transaction<any>;

export { ENVIRONMENTS } from '../../core/principal.ts';

export interface Databases {
  /** URL of the control database; the environment databases share its server. */
  controlUrl: string;
  control: Db;
  environments: Record<Environment, Db>;
  /** Connection settings of each environment database, for LISTEN connections. */
  environmentUrls: Record<Environment, string>;
  close(): Promise<void>;
}

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

export function databaseName(url: string): string {
  return decodeURIComponent(new URL(url).pathname.replace(/^\//, '')) || 'bantu';
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** The pool behind each Db, for the few paths that talk to pg directly (tenantBatch). */
const pools = new WeakMap<Db, pg.Pool>();

function connect(url: string, max: number, idleMs: number): Db {
  // Pipeline mode lets tenantBatch send its statements without waiting for each answer.
  // Kysely awaits every query before the next, so everything else goes out exactly as before.
  const pool = new pg.Pool({ connectionString: url, max, idleTimeoutMillis: idleMs, pipeline: true });
  // A connection the server drops (restart, crash, failover) must not crash the process.
  // Idle ones are reported on the pool; one checked out between two queries of a
  // transaction has no listener of its own, so give every connection one. The failed query
  // reports the error to its caller, and the pool discards the connection on release.
  pool.on('error', () => undefined);
  pool.on('connect', (client) => {
    client.on('error', () => undefined);
    prepareOnce(client);
  });
  const db: Db = new Kysely({ dialect: new PostgresDialect({ pool }) });
  pools.set(db, pool);
  return db;
}

/** Connections of a Db's pool right now, for the metrics: open, idle, and requests waiting for one. */
export function poolUse(db: Db): { total: number; idle: number; waiting: number; max: number } | undefined {
  const pool = pools.get(db);
  return pool && { total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount, max: pool.options.max ?? 10 };
}

/** Creates the control and environment databases when missing (needs CREATEDB). */
async function ensureDatabases(url: string, names: string[]): Promise<void> {
  const admin = new pg.Client({ connectionString: withDatabase(url, 'postgres') });
  await admin.connect();
  try {
    for (const name of names) {
      const { rowCount } = await admin.query('select 1 from pg_database where datname = $1', [name]);
      if (rowCount) continue;
      try {
        await admin.query(`create database ${quoteIdent(name)}`);
      } catch (error) {
        // Another process created it between our check and our create.
        if ((error as { code?: string }).code !== '42P04' && (error as { code?: string }).code !== '23505') throw error;
      }
    }
  } finally {
    await admin.end();
  }
}

/** `baseUrl` names the control database; the environment databases get suffixes. */
/**
 * The control and environment databases, created when missing. `poolSize`: connections this
 * process may open to each environment database (half that to the control database), so
 * that many processes of one installation stay within the server's max_connections; `idleMs`:
 * how long an unused one stays open.
 */
export async function openDatabases(baseUrl: string, controlName = databaseName(baseUrl), poolSize = 10, idleMs = 30_000): Promise<Databases> {
  const names = { control: controlName, live: `${controlName}_live`, test: `${controlName}_test` };
  await ensureDatabases(baseUrl, Object.values(names));
  const environmentUrls = { live: withDatabase(baseUrl, names.live), test: withDatabase(baseUrl, names.test) };
  const controlUrl = withDatabase(baseUrl, names.control);
  const databases: Databases = {
    controlUrl,
    control: connect(controlUrl, Math.ceil(poolSize / 2), idleMs),
    environments: { live: connect(environmentUrls.live, poolSize, idleMs), test: connect(environmentUrls.test, poolSize, idleMs) },
    environmentUrls,
    async close() {
      await Promise.all([databases.control.destroy(), databases.environments.live.destroy(), databases.environments.test.destroy()]);
    },
  };
  return databases;
}

/** Drops the three databases (tests and `bantu reset`). */
export async function dropDatabases(baseUrl: string, controlName = databaseName(baseUrl)): Promise<void> {
  const admin = new pg.Client({ connectionString: withDatabase(baseUrl, 'postgres') });
  await admin.connect();
  try {
    for (const name of [controlName, `${controlName}_live`, `${controlName}_test`]) {
      await admin.query(`drop database if exists ${quoteIdent(name)} with (force)`);
    }
  } finally {
    await admin.end();
  }
}

export interface MigrationSet {
  /** Owner of the migrations, e.g. `identity`; versions are numbered per service. */
  service: string;
  /** Folder of `NNNN_name.sql` files. */
  folder: string;
}

/**
 * Runs every migration not yet applied, in order, each in its own transaction,
 * under an advisory lock so that concurrent starts apply each file once.
 */
export async function migrate(db: Db, sets: MigrationSet[]): Promise<string[]> {
  const applied: string[] = [];
  await db.connection().execute(async (conn) => {
    await sql`select pg_advisory_lock(hashtext('bantu.migrations'))`.execute(conn);
    try {
      await sql`create table if not exists public.schema_migrations (
        service text not null, version int not null, name text not null,
        applied_at timestamptz not null default now(), primary key (service, version))`.execute(conn);
      for (const set of sets) {
        const files = (await fs.readdir(set.folder).catch(() => [] as string[])).filter((f) => /^\d{4}_.+\.sql$/.test(f)).sort();
        const done = await sql<{ version: number }>`select version from public.schema_migrations where service = ${set.service}`.execute(conn);
        const doneVersions = new Set(done.rows.map((row) => row.version));
        for (const file of files) {
          const version = Number.parseInt(file.slice(0, 4), 10);
          if (doneVersions.has(version)) continue;
          const text = await fs.readFile(path.join(set.folder, file), 'utf8');
          await conn.transaction().execute(async (trx) => {
            await sql.raw(text).execute(trx);
            await sql`insert into public.schema_migrations (service, version, name) values (${set.service}, ${version}, ${file})`.execute(trx);
          });
          applied.push(`${set.service}/${file}`);
        }
      }
    } finally {
      await sql`select pg_advisory_unlock(hashtext('bantu.migrations'))`.execute(conn);
    }
  });
  return applied;
}

/**
 * Binds the current transaction to one tenant. Setting the `role` parameter locally is
 * SET LOCAL ROLE, so both go in one statement.
 */
const bindTenant = (tenantId: string) => sql`select set_config('bantu.tenant_id', ${tenantId}, true), set_config('role', 'bantu_app', true)`;

/**
 * Runs `work` in a transaction bound to one tenant: PostgreSQL row-level security then
 * hides every other tenant's rows, whatever the query says. The role `bantu_app` has no
 * BYPASSRLS and owns nothing, so the policies apply even when we connect as a superuser.
 */
export async function withTenant<T>(db: Db, tenantId: string, work: (trx: Tx) => Promise<T>): Promise<T> {
  return db.transaction().execute(async (trx) => {
    await bindTenant(tenantId).execute(trx);
    return work(trx);
  });
}

/**
 * Batches run the same few statements over and over: each gets a name derived from its
 * text, so every connection parses and plans it once, then only binds and executes it.
 * Past PREPARED_MAX distinct texts (a caller building SQL dynamically), new ones go unnamed
 * rather than piling up prepared statements on every connection.
 */
const PREPARED_MAX = 200;
const statementNames = new Map<string, string>();
function statementName(text: string): string | undefined {
  let name = statementNames.get(text);
  if (!name && statementNames.size < PREPARED_MAX) {
    name = `tb_${createHash('sha1').update(text).digest('hex').slice(0, 16)}`;
    statementNames.set(text, name);
  }
  return name;
}

/**
 * Makes every query Kysely sends with parameters a named statement (see statementName), so a
 * connection parses and plans each text once instead of on every request. Only queries with
 * parameters: a parameterless text may hold several statements (migrations), which only the
 * simple protocol runs.
 */
function prepareOnce(client: pg.PoolClient): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  (client as { query: unknown }).query = (...args: unknown[]) => {
    const [text, values] = args;
    if (args.length === 2 && typeof text === 'string' && Array.isArray(values) && values.length > 0) {
      return query({ name: statementName(text), text, values });
    }
    return query(...args);
  };
}

/** The rows each statement of a batch returned, in order. */
export type BatchRows<T extends readonly RawBuilder<unknown>[]> = { [K in keyof T]: T[K] extends RawBuilder<infer Row> ? Row[] : never };

/**
 * Runs statements that do not depend on each other's results as one tenant-bound
 * transaction (the same binding as withTenant), in a single round trip: BEGIN, the tenant
 * binding, the statements and COMMIT are pipelined on one connection. All or none commit:
 * after a failed statement PostgreSQL refuses the rest and turns the COMMIT into a
 * ROLLBACK, and the first error is thrown. For hot paths where every round trip shows
 * (a login: one batch to read the user, one to open the session).
 */
export async function tenantBatch<const T extends readonly RawBuilder<unknown>[]>(db: Db, tenantId: string, statements: T): Promise<BatchRows<T>> {
  const pool = pools.get(db);
  if (!pool) throw new Error('tenantBatch needs a Db made by openDatabases');
  const client = await pool.connect();
  let healthy = false;
  try {
    const compiled = [bindTenant(tenantId), ...statements].map((statement) => statement.compile(db));
    // Corked, the whole batch leaves in one write: one wake-up of the server, not one per statement.
    const socket = (client as unknown as { connection?: { stream?: { cork?(): void; uncork?(): void } } }).connection?.stream;
    socket?.cork?.();
    let sent: Promise<pg.QueryResult>[];
    try {
      sent = [
        client.query('begin'),
        ...compiled.map((query) => client.query({ name: statementName(query.sql), text: query.sql, values: query.parameters as unknown[] })),
        client.query('commit'),
      ];
    } finally {
      socket?.uncork?.();
    }
    const settled = await Promise.allSettled(sent);
    // Every statement was answered, so the connection is idle again unless the link broke.
    healthy = client.getTransactionStatus() === 'I';
    const failed = settled.find((outcome) => outcome.status === 'rejected');
    if (failed) throw failed.reason;
    const results = settled.map((outcome) => (outcome as PromiseFulfilledResult<pg.QueryResult>).value);
    if (results[results.length - 1]?.command !== 'COMMIT') throw new Error('tenantBatch: the transaction did not commit');
    return results.slice(2, -1).map((result) => result.rows) as BatchRows<T>;
  } finally {
    client.release(healthy ? undefined : new Error('connection left mid-transaction'));
  }
}

/** SQLSTATE of `public.bantu_refuse` (platform migration 0002). */
const REFUSED = 'BN001';

/**
 * `changed` (a data-modifying statement with `returning`) as a statement that refuses its whole
 * transaction with `reason` when it returned no row: a conditional write that did not happen
 * (a key already claimed, a quota reached) then aborts a tenantBatch, which cannot look at a
 * row before sending the COMMIT. Check for it with `isRefusal`.
 */
export function refuseIfNone(changed: RawBuilder<unknown>, reason: string): RawBuilder<{ done: number }> {
  return sql<{ done: number }>`
    with changed as (${changed})
    select case when exists (select 1 from changed) then 1 else public.bantu_refuse(${reason}) end as done`;
}

/** Whether `error` is the refusal `refuseIfNone` made with this reason. */
export function isRefusal(error: unknown, reason: string): boolean {
  const pgError = error as { code?: string; message?: string };
  return pgError?.code === REFUSED && pgError.message === reason;
}

/**
 * One tenant-bound read in one round trip (a tenantBatch of one statement): the same RLS
 * binding as withTenant, without its four round trips, and the statement prepared once per
 * connection. For the hot reads (a file's metadata, a folder's listing).
 */
export async function tenantRead<Row>(db: Db, tenantId: string, statement: RawBuilder<Row>): Promise<Row[]> {
  const [rows] = await tenantBatch(db, tenantId, [statement] as const);
  return rows;
}

