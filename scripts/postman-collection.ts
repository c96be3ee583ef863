/**
 * OpenAPI 3.1 document -> Postman collection v2.1. Pure and deterministic (no random ids,
 * no clock), so the committed collection can be compared with a fresh one in a test.
 *
 * - one folder per tag (first tag of each operation), in order of first appearance;
 * - collection variables {{baseUrl}}, {{accountKey}}, {{applicationKey}}, {{accessToken}},
 *   {{refreshToken}}, {{operatorToken}};
 * - auth per request: keys as HTTP Basic (key as user name, empty password), tokens as Bearer,
 *   none on open routes; which credential a route wants follows ../shared/API.md section 4
 *   (see CREDENTIALS below), or the operation's `x-bantu-auth` list when the gateway adds it;
 * - example JSON bodies built from the request schemas;
 * - responses that carry `access_token` / `refresh_token` store them in the collection
 *   variables, so "register" or "login" followed by any user route just works; a create
 *   (`POST /v1/files` -> 201 {id}) stores `{{fileId}}`, which the item routes use.
 */

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
/** The JSON Schema keywords read here (TypeBox output); any other keyword passes through unread. */
interface Schema {
  $ref?: string;
  type?: string | string[];
  format?: string;
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  anyOf?: Schema[];
  oneOf?: Schema[];
  allOf?: Schema[];
  enum?: unknown[];
  const?: unknown;
  default?: unknown;
  example?: unknown;
  examples?: unknown[];
  minimum?: number;
  minLength?: number;
  [keyword: string]: unknown;
}

export interface OpenApiDocument {
  openapi: string;
  info: { title: string; version: string; description?: string };
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, Schema> };
}

interface Operation {
  summary?: string;
  description?: string;
  operationId?: string;
  tags?: string[];
  parameters?: Array<{ name: string; in: 'query' | 'path' | 'header' | 'cookie'; required?: boolean; description?: string; schema?: Schema }>;
  requestBody?: { required?: boolean; content?: Record<string, { schema?: Schema }> };
  responses?: Record<string, { description?: string; content?: Record<string, { schema?: Schema }> }>;
  security?: Array<Record<string, string[]>>;
  'x-bantu-auth'?: string[];
}

export const DEFAULT_BASE_URL = 'https://127.0.0.1:8443';
const METHODS = ['get', 'post', 'put', 'patch', 'delete', 'head', 'options'] as const;

/** The credential a Postman request sends. */
export type Credential = 'none' | 'operatorToken' | 'accountKey' | 'applicationKey' | 'accessToken';

/**
 * Which credential each route wants, from ../shared/API.md section 4, by method and path
 * pattern; the first match wins. A route that accepts several kinds gets the one a
 * newcomer is most likely to try first (the account key for admin routes, the user's token
 * for a user's own things). Routes that no rule names fall back on `x-bantu-auth`, then on
 * the user's access token.
 */
const CREDENTIALS: Array<{ method?: string; path: RegExp; credential: Credential }> = [
  { path: /^\/v1\/tenants(\/|$)/, credential: 'operatorToken' },
  { path: /^\/v1\/keys(\/|$)/, credential: 'accountKey' },
  { method: 'post', path: /^\/v1\/auth\/logout$/, credential: 'accessToken' },
  { path: /^\/v1\/auth\//, credential: 'applicationKey' },
  { path: /^\/v1\/users\/me$/, credential: 'accessToken' },
  { path: /^\/v1\/users(\/|$)/, credential: 'accountKey' },
  { path: /^\/v1\/(audit|usage)$/, credential: 'accountKey' },
  { path: /^\/v1\/backups(\/|$)/, credential: 'accountKey' },
  { path: /^\/v1\/(files|exports)(\/|$)/, credential: 'accessToken' },
];

/**
 * Operations that take file bytes (multipart part `file`, or a raw body) per API.md, for
 * when the route declares no requestBody (its body is parsed by a stream, not a schema).
 * Postman gets a form-data body with a `file` part to pick.
 */
const UPLOADS: Array<{ method: string; path: RegExp }> = [
  { method: 'post', path: /^\/v1\/files$/ },
  { method: 'put', path: /^\/v1\/files\/\{[^}]+\}\/content$/ },
];

const KIND_TO_CREDENTIAL: Record<string, Credential> = {
  operator: 'operatorToken',
  user: 'accessToken',
  account_key: 'accountKey',
  application_key: 'applicationKey',
};

export function credentialFor(method: string, path: string, operation: Operation): Credential {
  if (!operation.security || operation.security.length === 0) return 'none';
  for (const rule of CREDENTIALS) if ((!rule.method || rule.method === method) && rule.path.test(path)) return rule.credential;
  const kinds = operation['x-bantu-auth'];
  if (Array.isArray(kinds) && kinds.length > 0) return KIND_TO_CREDENTIAL[kinds[0] as string] ?? 'accessToken';
  return 'accessToken';
}

function postmanAuth(credential: Credential): Json {
  switch (credential) {
    case 'none':
      return { type: 'noauth' };
    case 'accountKey':
    case 'applicationKey':
      return {
        type: 'basic',
        basic: [
          { key: 'username', value: `{{${credential}}}`, type: 'string' },
          { key: 'password', value: '', type: 'string' },
        ],
      };
    default:
      return { type: 'bearer', bearer: [{ key: 'token', value: `{{${credential}}}`, type: 'string' }] };
  }
}

/** A plausible example value for a JSON schema (TypeBox output: no $ref in practice, but handled). */
export function exampleOf(schema: Schema | undefined, doc: OpenApiDocument, name = '', depth = 0): Json {
  if (!schema || depth > 8) return null;
  if (typeof schema.$ref === 'string') {
    const target = schema.$ref.replace(/^#\/components\/schemas\//, '');
    return exampleOf(doc.components?.schemas?.[target], doc, name, depth + 1);
  }
  if (Array.isArray(schema.examples) && schema.examples.length > 0) return schema.examples[0] as Json;
  if (schema.example !== undefined) return schema.example as Json;
  if (schema.const !== undefined) return schema.const as Json;
  if (schema.default !== undefined) return schema.default as Json;
  if (Array.isArray(schema.enum) && schema.enum.length > 0) return schema.enum[0] as Json;
  for (const key of ['anyOf', 'oneOf'] as const) {
    if (Array.isArray(schema[key])) {
      const first = (schema[key] as Schema[]).find((s) => s.type !== 'null') ?? schema[key][0];
      return exampleOf(first, doc, name, depth + 1);
    }
  }
  if (Array.isArray(schema.allOf)) {
    return Object.assign({}, ...schema.allOf.map((s: Schema) => exampleOf(s, doc, name, depth + 1)));
  }
  const type = Array.isArray(schema.type) ? schema.type.find((t: string) => t !== 'null') : schema.type;
  switch (type) {
    case 'object': {
      const out: Record<string, Json> = {};
      const required = new Set<string>(schema.required ?? []);
      const entries = Object.entries((schema.properties ?? {}) as Record<string, Schema>);
      // What must be sent; for a body of optional fields only (a PATCH), its first field:
      // a sample that the server accepts as it stands beats one that shows every field.
      const shown = required.size > 0 ? entries.filter(([key]) => required.has(key)) : entries.slice(0, 1);
      for (const [key, sub] of shown) out[key] = exampleOf(sub, doc, key, depth + 1);
      return out;
    }
    case 'array':
      return schema.items ? [exampleOf(schema.items, doc, name, depth + 1)] : [];
    case 'integer':
    case 'number':
      return typeof schema.minimum === 'number' ? schema.minimum : 1;
    case 'boolean':
      return true;
    case 'string':
      return exampleString(schema, name);
    default:
      return null;
  }
}

function exampleString(schema: Schema, name: string): string {
  switch (schema.format) {
    case 'email':
      return 'ada@example.com';
    case 'date-time':
      return '2026-01-01T00:00:00Z';
    case 'uri':
    case 'url':
      return 'https://example.com';
  }
  const byName: Record<string, string> = {
    email: 'ada@example.com',
    password: 'correct horse battery staple',
    new_password: 'correct horse battery staple',
    name: 'Example',
    refresh_token: '{{refreshToken}}',
    path: '/',
    token: '<token from the mail>',
  };
  const value = byName[name] ?? 'string';
  if (typeof schema.minLength === 'number' && value.length < schema.minLength) return value.padEnd(schema.minLength, 'x');
  return value;
}

function toPostmanPath(path: string): string {
  return path.replace(/\{([^}]+)\}/g, ':$1');
}

function requestItem(doc: OpenApiDocument, method: string, path: string, operation: Operation): Json {
  const parameters = operation.parameters ?? [];
  const postmanPath = toPostmanPath(path);
  const query = parameters
    .filter((p) => p.in === 'query')
    .map((p) => {
      // A query parameter gets a value only when the schema names one (default, enum,
      // example): a made-up cursor or filter would only produce a confusing 422.
      const s = p.schema ?? {};
      const named = s.examples?.[0] ?? s.example ?? s.default ?? s.const ?? s.enum?.[0];
      const example = named === undefined ? null : (named as Json);
      return {
        key: p.name,
        value: example === null ? '' : String(example),
        ...(p.description ? { description: p.description } : {}),
        // Optional filters start unticked; a required one (even with a default) is sent.
        ...(p.required ? {} : { disabled: true }),
      };
    });
  const idVariable = resourceIdVariable(path);
  const variable = parameters
    .filter((p) => p.in === 'path')
    .map((p) => {
      const named = p.schema?.examples?.[0] ?? p.schema?.example ?? p.schema?.default;
      const value = p.name === 'id' && idVariable ? `{{${idVariable}}}` : named === undefined ? '' : String(named);
      return { key: p.name, value, description: p.description ?? (p.name === 'id' && idVariable ? `{{${idVariable}}} is set by the last create in this folder` : `the ${p.name}`) };
    });
  const headers: Json[] = parameters
    .filter((p) => p.in === 'header' && p.name.toLowerCase() !== 'authorization')
    .map((p) => ({ key: p.name, value: '', disabled: !p.required, ...(p.description ? { description: p.description } : {}) }));

  let body: Json | undefined;
  const content = operation.requestBody?.content ?? {};
  const json = content['application/json'];
  if (json) {
    headers.push({ key: 'Content-Type', value: 'application/json' });
    let raw = JSON.stringify(exampleOf(json.schema, doc), null, 2);
    // register, login and forgot share one address so they follow on from each other; any
    // other email (a user an admin creates) is fresh each time, so it never collides with them.
    if (!path.startsWith('/v1/auth/')) raw = raw.replaceAll('"ada@example.com"', '"{{$randomEmail}}"');
    body = { mode: 'raw', raw, options: { raw: { language: 'json' } } };
  } else if (content['multipart/form-data']) {
    const schema = content['multipart/form-data'].schema ?? {};
    const fields: Json[] = Object.entries((schema.properties ?? { file: { format: 'binary' } }) as Record<string, Schema>).map(([key, sub]): Json =>
      sub.format === 'binary' || key === 'file' ? { key, type: 'file', src: [] } : { key, value: String(exampleOf(sub, doc, key) ?? ''), type: 'text' },
    );
    body = { mode: 'formdata', formdata: fields };
  } else if (Object.keys(content).length === 0 && UPLOADS.some((u) => u.method === method && u.path.test(path))) {
    body = { mode: 'formdata', formdata: [{ key: 'file', type: 'file', src: [] }] };
  } else {
    const [type] = Object.keys(content);
    if (type) {
      headers.push({ key: 'Content-Type', value: type });
      body = { mode: 'file', file: {} };
    }
  }

  const url: Record<string, Json> = {
    raw: `{{baseUrl}}${postmanPath}${query.length ? `?${query.filter((q) => !('disabled' in q)).map((q) => `${q.key}=${q.value}`).join('&')}` : ''}`.replace(/\?$/, ''),
    host: ['{{baseUrl}}'],
    path: postmanPath.split('/').filter(Boolean),
  };
  if (query.length) url.query = query;
  if (variable.length) url.variable = variable;

  const description = [operation.description, credentialNote(credentialFor(method, path, operation))].filter(Boolean).join('\n\n');
  const request: Record<string, Json> = {
    method: method.toUpperCase(),
    header: headers,
    auth: postmanAuth(credentialFor(method, path, operation)),
    url,
  };
  if (body !== undefined) request.body = body;
  if (description) request.description = description;

  const item: Record<string, Json> = { name: operation.summary ?? `${method.toUpperCase()} ${path}`, request };
  const tests = [...(tokenCapture(operation) ?? []), ...(idCapture(method, path, operation) ?? [])];
  if (tests.length > 0) item.event = [{ listen: 'test', script: { type: 'text/javascript', exec: tests } }];
  return item;
}

function credentialNote(credential: Credential): string {
  switch (credential) {
    case 'none':
      return 'No credentials.';
    case 'operatorToken':
      return 'Sends the operator token ({{operatorToken}}) as Bearer.';
    case 'accountKey':
      return 'Sends the account key ({{accountKey}}) as HTTP Basic user name with an empty password.';
    case 'applicationKey':
      return 'Sends the application key ({{applicationKey}}) as HTTP Basic user name with an empty password.';
    case 'accessToken':
      return 'Sends the user access token ({{accessToken}}, set by register, login or refresh) as Bearer.';
  }
}

/** A test script that keeps the tokens of a register/login/refresh answer for later requests. */
function tokenCapture(operation: Operation): string[] | undefined {
  const fields = new Set<string>();
  for (const [status, response] of Object.entries(operation.responses ?? {})) {
    if (!status.startsWith('2')) continue;
    const props = response.content?.['application/json']?.schema?.properties ?? {};
    for (const key of ['access_token', 'refresh_token']) if (key in props) fields.add(key);
  }
  if (fields.size === 0) return undefined;
  const lines = ['if (pm.response.code >= 200 && pm.response.code < 300) {', '  const body = pm.response.json();'];
  if (fields.has('access_token')) lines.push("  pm.collectionVariables.set('accessToken', body.access_token);");
  if (fields.has('refresh_token')) lines.push("  pm.collectionVariables.set('refreshToken', body.refresh_token);");
  lines.push('}');
  return lines;
}

/** `/v1/files/{id}/...` -> `fileId`: the collection variable that holds the id of that resource. */
export function resourceIdVariable(path: string): string | undefined {
  const match = /^\/v1\/([a-z_]+)\/\{id\}/.exec(path) ?? /^\/v1\/([a-z_]+)$/.exec(path);
  if (!match?.[1]) return undefined;
  const resource = match[1].replace(/ies$/, 'y').replace(/s$/, '');
  return `${resource.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase())}Id`;
}

/** A create (`POST /v1/<things>` answering 201 with an `id`) stores that id for the item routes. */
function idCapture(method: string, path: string, operation: Operation): string[] | undefined {
  if (method !== 'post' || !/^\/v1\/[a-z_]+$/.test(path)) return undefined;
  const created = operation.responses?.['201'];
  const schema = created?.content?.['application/json']?.schema;
  if (created && schema && !('id' in (schema.properties ?? {}))) return undefined;
  if (!created && !UPLOADS.some((u) => u.method === method && u.path.test(path))) return undefined;
  return [`if (pm.response.code === 201) pm.collectionVariables.set('${resourceIdVariable(path)}', pm.response.json().id);`];
}

export function toPostmanCollection(doc: OpenApiDocument, baseUrl = DEFAULT_BASE_URL): Json {
  const folders = new Map<string, Json[]>();
  const idVariables = new Set<string>();
  for (const [path, operations] of Object.entries(doc.paths)) {
    const id = /\{id\}/.test(path) ? resourceIdVariable(path) : undefined;
    if (id) idVariables.add(id);
    for (const method of METHODS) {
      const operation = operations[method];
      if (!operation) continue;
      const tag = operation.tags?.[0] ?? 'other';
      if (!folders.has(tag)) folders.set(tag, []);
      folders.get(tag)?.push(requestItem(doc, method, path, operation));
    }
  }
  return {
    info: {
      name: `${doc.info.title} ${doc.info.version}`,
      description:
        `${doc.info.description ?? ''}\n\nGenerated from the OpenAPI document by \`npm run postman\`; do not edit by hand.\n` +
        'Set {{baseUrl}} and the keys printed at first start (also in <data dir>/secrets/). ' +
        'With the self-signed certificate, either add data/tls/cert.pem under Settings > Certificates > CA certificates, ' +
        'or turn off SSL certificate verification for localhost.',
      schema: 'https://schema.getpostman.com/json/collection/v2.1.0/collection.json',
    },
    item: [...folders].map(([name, item]) => ({ name, item })),
    variable: [
      { key: 'baseUrl', value: baseUrl, type: 'string' },
      { key: 'accountKey', value: '', type: 'string', description: 'acc_..._test or acc_..._live' },
      { key: 'applicationKey', value: '', type: 'string', description: 'app_..._test or app_..._live' },
      { key: 'accessToken', value: '', type: 'string', description: 'set by register, login and refresh' },
      { key: 'refreshToken', value: '', type: 'string', description: 'set by register, login and refresh' },
      { key: 'operatorToken', value: '', type: 'string', description: 'printed at first start; <data dir>/secrets/operator-token' },
      ...[...idVariables].map((key) => ({ key, value: '', type: 'string', description: 'set by the create request of its folder' })),
    ],
  };
}

/** Path of the first difference between two JSON values, or undefined when equal. For test messages. */
export function firstDifference(a: unknown, b: unknown, at = ''): string | undefined {
  if (Object.is(a, b)) return undefined;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null || Array.isArray(a) !== Array.isArray(b)) {
    return `${at || '/'}: ${JSON.stringify(a)?.slice(0, 120)} vs ${JSON.stringify(b)?.slice(0, 120)}`;
  }
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])];
  for (const key of keys) {
    const found = firstDifference((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key], `${at}/${key}`);
    if (found) return found;
  }
  return undefined;
}
