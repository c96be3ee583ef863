import { Type } from '@sinclair/typebox';

const KeyPair = Type.Object({ account_key: Type.String(), application_key: Type.String() });

export const Tenant = Type.Object({
  id: Type.String(),
  name: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
});

export const CreatedTenant = Type.Object({
  id: Type.String(),
  name: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
  keys: Type.Object({ live: KeyPair, test: KeyPair }, { description: 'Shown once: only hashes are kept' }),
});

export const CreateTenantBody = Type.Object(
  { name: Type.String({ minLength: 1, maxLength: 100, pattern: '^[^\\u0000-\\u001f]+$' }) },
  { additionalProperties: false },
);
