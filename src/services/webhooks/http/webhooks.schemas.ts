import { Type } from '@sinclair/typebox';
import { ListQuery, Page } from '../../../core/pagination.ts';

export const EventType = Type.Union([Type.Literal('File_create'), Type.Literal('File_update'), Type.Literal('File_delete')]);
const Status = Type.Union([Type.Literal('enabled'), Type.Literal('disabled')]);
const Url = Type.String({ minLength: 1, maxLength: 2048, description: 'https URL (http only inside BANTU_WEBHOOK_ALLOWED_NETWORKS); must not resolve to a non-public address' });
const Description = Type.String({ maxLength: 500 });

export const Webhook = Type.Object({
  id: Type.String(),
  url: Type.String(),
  events: Type.Array(EventType),
  description: Type.Union([Type.String(), Type.Null()]),
  status: Status,
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
});

const Secret = Type.String({ description: 'whsec_ + base64 of 32 random bytes; shown only now' });
export const CreatedWebhook = Type.Intersect([Webhook, Type.Object({ secret: Secret })]);
export const RotatedSecret = Type.Object({ secret: Secret });

export const CreateWebhook = Type.Object(
  {
    url: Url,
    events: Type.Optional(Type.Array(EventType, { minItems: 1, maxItems: 3, description: 'Default: all three' })),
    description: Type.Optional(Description),
  },
  { additionalProperties: false },
);

export const UpdateWebhook = Type.Object(
  {
    url: Type.Optional(Url),
    events: Type.Optional(Type.Array(EventType, { minItems: 1, maxItems: 3 })),
    description: Type.Optional(Type.Union([Description, Type.Null()])),
    status: Type.Optional(Status),
  },
  { additionalProperties: false },
);

export const Delivery = Type.Object({
  id: Type.String(),
  event_id: Type.String({ description: 'Also the webhook-id header, the same on every attempt' }),
  type: Type.String({ description: 'File_create, File_update, File_delete or ping' }),
  attempt: Type.Integer({ minimum: 0, description: 'Attempts made so far' }),
  status: Type.Union([Type.Literal('pending'), Type.Literal('succeeded'), Type.Literal('failed')]),
  response_status: Type.Union([Type.Integer(), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  duration_ms: Type.Union([Type.Integer(), Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
  next_attempt_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});

export const WebhookPage = Page(Webhook);
export const DeliveryPage = Page(Delivery);
export { ListQuery };
export const WebhookParams = Type.Object({ id: Type.String({ maxLength: 100 }) });
export const DeliveryParams = Type.Object({ id: Type.String({ maxLength: 100 }), delivery_id: Type.String({ maxLength: 100 }) });
export const Accepted = Type.Object({ status: Type.Literal('accepted') });
