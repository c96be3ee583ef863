import { sql } from 'kysely';
import type { Db, Tx } from '../../../adapters/db/pg.ts';

export interface SigningKeyRow {
  kid: string;
  algorithm: string;
  public_jwk: Record<string, unknown>;
  private_enc: Buffer;
  created_at: Date;
  retired_at: Date | null;
}

/** The signing key and the retired ones still inside the verification window. */
export async function listUsableSigningKeys(db: Db | Tx, retiredAfter: Date): Promise<SigningKeyRow[]> {
  const result = await sql<SigningKeyRow>`
    select kid, algorithm, public_jwk, private_enc, created_at, retired_at from identity.signing_key
    where retired_at is null or retired_at > ${retiredAfter}
    order by created_at desc`.execute(db);
  return result.rows;
}

/** Serialises key creation and rotation between processes sharing the database. */
export async function lockSigningKeys(trx: Tx): Promise<void> {
  await sql`select pg_advisory_xact_lock(hashtext('bantu.identity.signing_key'))`.execute(trx);
}

export async function hasActiveSigningKey(trx: Tx): Promise<boolean> {
  const result = await sql`select 1 from identity.signing_key where retired_at is null`.execute(trx);
  return result.rows.length > 0;
}

export async function retireActiveSigningKey(trx: Tx): Promise<void> {
  await sql`update identity.signing_key set retired_at = now() where retired_at is null`.execute(trx);
}

export async function insertSigningKey(
  trx: Tx,
  key: { kid: string; algorithm: string; public_jwk: Record<string, unknown>; private_enc: Buffer },
): Promise<void> {
  await sql`
    insert into identity.signing_key (kid, algorithm, public_jwk, private_enc)
    values (${key.kid}, ${key.algorithm}, ${JSON.stringify(key.public_jwk)}::jsonb, ${key.private_enc})`.execute(trx);
}
