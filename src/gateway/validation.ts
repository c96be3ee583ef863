import { Ajv, type Options } from 'ajv';
import addFormatsModule from 'ajv-formats';
import type { FastifySchemaCompiler } from 'fastify';

/**
 * Request validation with two Ajv instances. Query strings, path parameters and headers
 * arrive as text, so they are coerced (`?limit=20` becomes 20). JSON bodies are not:
 * `{"password": 12345678}` is a wrong type and answers 422, instead of being quietly
 * turned into the string "12345678". Both report every error (`allErrors`), both keep
 * unknown fields so that `additionalProperties: false` refuses them rather than drops them.
 */
// ajv-formats is CommonJS: its default export arrives wrapped under ESM.
const addFormats = ((addFormatsModule as unknown as { default?: typeof addFormatsModule }).default ?? addFormatsModule) as unknown as (ajv: Ajv) => Ajv;

export function createValidatorCompiler(): FastifySchemaCompiler<unknown> {
  const base: Options = { removeAdditional: false, useDefaults: true, allErrors: true, addUsedSchema: false, strict: false };
  const coercing = addFormats(new Ajv({ ...base, coerceTypes: 'array' }));
  const exact = addFormats(new Ajv({ ...base, coerceTypes: false }));
  return ({ schema, httpPart }) => (httpPart === 'body' ? exact : coercing).compile(schema as object);
}
