import { Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import { Errors, fail } from '../../../core/errors.ts';
import { isTenantAdmin, type TenantPrincipal } from '../../../core/principal.ts';
import { tenantPrincipalOf } from '../../../gateway/auth.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import type { WebhooksService } from '../domain/webhooks.service.ts';
import {
  CreatedWebhook,
  CreateWebhook,
  DeliveryPage,
  DeliveryParams,
  ListQuery,
  RotatedSecret,
  UpdateWebhook,
  Webhook,
  WebhookPage,
  WebhookParams,
} from './webhooks.schemas.ts';

const ADMINS = ['account_key', 'user'] as const;
const tags = ['webhooks'];
const Accepted = Type.Object({ status: Type.Literal('accepted') });

/** Webhooks are for account keys and admin users of the tenant and environment. */
function adminOf(request: FastifyRequest): TenantPrincipal {
  const principal = tenantPrincipalOf(request);
  if (!isTenantAdmin(principal)) fail(Errors.forbidden, 'Webhooks are for account keys and admin users');
  return principal;
}

export function webhooksRoutes(webhooks: WebhooksService): Route[] {
  return [
    route({
      method: 'POST',
      url: '/webhooks',
      auth: [...ADMINS],
      schema: {
        tags,
        summary: 'Register a webhook endpoint',
        description:
          'Events File_create, File_update, File_delete of this tenant and environment are POSTed to `url`, signed per Standard Webhooks. ' +
          'The secret is shown only here and at rotation. 422 validation_failed when the URL is not https or resolves to a loopback, private, ' +
          'link-local, unique-local, multicast or metadata address (unless inside BANTU_WEBHOOK_ALLOWED_NETWORKS, where http is accepted too).',
        body: CreateWebhook,
        response: { 201: CreatedWebhook },
      },
      handler: async (request, reply) => reply.code(201).send(await webhooks.create(adminOf(request), request.body)),
    }),

    route({
      method: 'GET',
      url: '/webhooks',
      auth: [...ADMINS],
      schema: { tags, summary: 'Webhook endpoints, newest first (never the secret)', querystring: ListQuery, response: { 200: WebhookPage } },
      handler: async (request) => webhooks.list(adminOf(request), request.query),
    }),

    route({
      method: 'GET',
      url: '/webhooks/:id',
      auth: [...ADMINS],
      errors: [404],
      schema: { tags, summary: 'One webhook endpoint', params: WebhookParams, response: { 200: Webhook } },
      handler: async (request) => webhooks.get(adminOf(request), request.params.id),
    }),

    route({
      method: 'PATCH',
      url: '/webhooks/:id',
      auth: [...ADMINS],
      errors: [404],
      schema: {
        tags,
        summary: 'Change a webhook endpoint',
        description: 'A new `url` is checked as at creation. A disabled endpoint (by hand, or after 3 days of failures) gets no new events; `status: "enabled"` resumes them, and its deliveries still pending. Failed ones can be retried one by one.',
        params: WebhookParams,
        body: UpdateWebhook,
        response: { 200: Webhook },
      },
      handler: async (request) => webhooks.update(adminOf(request), request.params.id, request.body),
    }),

    route({
      method: 'DELETE',
      url: '/webhooks/:id',
      auth: [...ADMINS],
      errors: [404],
      schema: { tags, summary: 'Remove a webhook endpoint and its deliveries', params: WebhookParams, response: { 204: Type.Null() } },
      handler: async (request, reply) => {
        await webhooks.remove(adminOf(request), request.params.id);
        return reply.code(204).send();
      },
    }),

    route({
      method: 'POST',
      url: '/webhooks/:id/secret/rotate',
      auth: [...ADMINS],
      errors: [404],
      absentBody: {},
      schema: {
        tags,
        summary: 'Rotate the signing secret',
        description: 'Returns the new secret (shown only now). For 24 h the old secret keeps signing beside it: deliveries carry both signatures.',
        params: WebhookParams,
        body: Type.Object({}, { additionalProperties: false }),
        response: { 200: RotatedSecret },
      },
      handler: async (request) => webhooks.rotateSecret(adminOf(request), request.params.id),
    }),

    route({
      method: 'POST',
      url: '/webhooks/:id/ping',
      auth: [...ADMINS],
      errors: [404],
      absentBody: {},
      schema: {
        tags,
        summary: 'Send a ping event',
        description: 'Queues a delivery of type `ping` (data `{webhook_id}`), sent and retried like any event.',
        params: WebhookParams,
        body: Type.Object({}, { additionalProperties: false }),
        response: { 202: Type.Object({ status: Type.Literal('accepted'), event_id: Type.String() }) },
      },
      handler: async (request, reply) => reply.code(202).send({ status: 'accepted', ...(await webhooks.ping(adminOf(request), request.params.id)) }),
    }),

    route({
      method: 'GET',
      url: '/webhooks/:id/deliveries',
      auth: [...ADMINS],
      errors: [404],
      schema: { tags, summary: "An endpoint's deliveries, newest first", params: WebhookParams, querystring: ListQuery, response: { 200: DeliveryPage } },
      handler: async (request) => webhooks.deliveries(adminOf(request), request.params.id, request.query),
    }),

    route({
      method: 'POST',
      url: '/webhooks/:id/deliveries/:delivery_id/retry',
      auth: [...ADMINS],
      errors: [404],
      absentBody: {},
      schema: {
        tags,
        summary: 'Send a delivery again now',
        description: 'Whatever its state: it becomes pending, due at once, with a fresh 3-day retry window.',
        params: DeliveryParams,
        body: Type.Object({}, { additionalProperties: false }),
        response: { 202: Accepted },
      },
      handler: async (request, reply) => {
        await webhooks.retry(adminOf(request), request.params.id, request.params.delivery_id);
        return reply.code(202).send({ status: 'accepted' });
      },
    }),
  ];
}
