import { Type } from '@sinclair/typebox';
import { SCOPES } from '../domain/api-keys.ts';
import { PASSWORD_MAX, PASSWORD_MIN } from '../domain/passwords.ts';

/** Schemas of the identity routes: request validation, response serialisation and OpenAPI in one. */
const NO_CONTROL = '^[^\\u0000-\\u001f\\u007f]*$';

export const Email = Type.String({ format: 'email', minLength: 3, maxLength: 254, description: 'Compared case-insensitively' });
export const Password = Type.String({
  minLength: PASSWORD_MIN,
  maxLength: PASSWORD_MAX,
  description: `${PASSWORD_MIN} to ${PASSWORD_MAX} characters; stored only as an argon2id hash`,
});
export const Name = Type.String({ minLength: 1, maxLength: 200, pattern: `^(?=.*\\S)${NO_CONTROL.slice(1)}` });
export const Role = Type.Union([Type.Literal('user'), Type.Literal('admin')]);
export const Id = Type.String({ minLength: 1, maxLength: 100 });
export const IdParams = Type.Object({ id: Id }, { additionalProperties: false });
const Secret = Type.String({ minLength: 1, maxLength: 512 });

export const User = Type.Object({
  id: Type.String(),
  email: Type.String(),
  name: Type.String(),
  role: Role,
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
});

export const AuthResult = Type.Object({
  user: User,
  access_token: Type.String({ description: 'JWT (EdDSA), valid expires_in seconds; send as Authorization: Bearer' }),
  refresh_token: Type.String({ description: 'Opaque; single use: each refresh returns the next one' }),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer(),
});

export const RegisterBody = Type.Object({ email: Email, password: Password, name: Name }, { additionalProperties: false });
// Login accepts any non-empty password: a too-short one is simply wrong, not malformed.
export const LoginBody = Type.Object(
  { email: Email, password: Type.String({ minLength: 1, maxLength: PASSWORD_MAX }) },
  { additionalProperties: false },
);
export const RefreshBody = Type.Object({ refresh_token: Secret }, { additionalProperties: false });
export const ForgotBody = Type.Object({ email: Email }, { additionalProperties: false });
export const Accepted = Type.Object({ status: Type.Literal('accepted'), detail: Type.String() });
export const ResetBody = Type.Object({ token: Secret, password: Password }, { additionalProperties: false });

export const UpdateMeBody = Type.Object(
  {
    name: Type.Optional(Name),
    email: Type.Optional(Email),
    password: Type.Optional(Password),
    current_password: Type.Optional(Type.String({ minLength: 1, maxLength: PASSWORD_MAX, description: 'Required to change email or password' })),
  },
  { additionalProperties: false },
);
export const CreateUserBody = Type.Object(
  { email: Email, password: Password, name: Name, role: Type.Optional(Role) },
  { additionalProperties: false },
);
export const UpdateUserBody = Type.Object(
  { name: Type.Optional(Name), email: Type.Optional(Email), password: Type.Optional(Password), role: Type.Optional(Role) },
  { additionalProperties: false },
);

export const Scope = Type.Union(SCOPES.map((scope) => Type.Literal(scope)));
export const KeyKind = Type.Union([Type.Literal('account'), Type.Literal('application')]);
export const CreateKeyBody = Type.Object(
  {
    kind: KeyKind,
    name: Name,
    scopes: Type.Optional(Type.Array(Scope, { maxItems: SCOPES.length * 2, description: 'Application keys only; account keys have every power' })),
  },
  { additionalProperties: false },
);
const KeyFields = {
  id: Type.String(),
  kind: KeyKind,
  environment: Type.Union([Type.Literal('live'), Type.Literal('test')]),
  name: Type.String(),
  scopes: Type.Array(Type.String()),
  prefix: Type.String({ description: 'The start and end of the key, to recognise it' }),
  created_at: Type.String({ format: 'date-time' }),
};
export const KeyInfo = Type.Object(KeyFields);
export const CreatedKey = Type.Object({ ...KeyFields, key: Type.String({ description: 'The secret: shown only here' }) });

export const AuditEvent = Type.Object({
  id: Type.String(),
  type: Type.String(),
  actor: Type.Union([Type.Object({ type: Type.String(), id: Type.String() }), Type.Null()]),
  ip: Type.Union([Type.String(), Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
  detail: Type.Record(Type.String(), Type.Unknown()),
});

export const Jwks = Type.Object({ keys: Type.Array(Type.Record(Type.String(), Type.Unknown())) });

const EnvironmentName = Type.Union([Type.Literal('live'), Type.Literal('test')]);

export const SigningKey = Type.Object({
  kid: Type.String(),
  environment: EnvironmentName,
  algorithm: Type.String({ description: 'EdDSA (Ed25519)' }),
  status: Type.Union([Type.Literal('active'), Type.Literal('retired')], { description: 'active: signs new tokens; retired: only verifies the tokens it signed' }),
  created_at: Type.String({ format: 'date-time' }),
  retired_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  verifies_until: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'retired keys: when the last token they signed expires and they leave the JWKS' }),
});

export const SigningKeyList = Type.Object({ data: Type.Array(SigningKey), next_cursor: Type.Null() });

export const RotateSigningKeysBody = Type.Object(
  { environment: Type.Optional(EnvironmentName) },
  { additionalProperties: false, description: 'Without `environment` (`{}`), both environments get a new key.' },
);
