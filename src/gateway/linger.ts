import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';

/**
 * Answers given before the request body has been read (413 from Content-Length, 401 on an
 * upload, a 409 precheck, a 413 mid-stream...) must reach the client. Node ends a
 * `Connection: close` answer with `socket.destroySoon()`: the socket is destroyed as soon as
 * the answer is flushed. Bytes the client is still sending then meet a closed socket, the
 * kernel answers them with a RST, and clients that were still writing (browsers' and Node's
 * `fetch`, node:https, most SDKs) report EPIPE or ECONNRESET instead of the answer.
 *
 * So, like nginx's lingering close: answer, mark the connection to close, and keep reading
 * and discarding what the client still sends, up to `maxBytes` or `maxMs`, whichever comes
 * first. Then close. A client cannot hold the server longer than that.
 */
export interface LingerLimits {
  maxBytes: number;
  maxMs: number;
}

export const DEFAULT_LINGER: LingerLimits = { maxBytes: 64 * 1024 * 1024, maxMs: 5_000 };

/**
 * Marks every answer sent before its request body was complete `Connection: close`, and makes
 * its socket linger instead of closing at once. Costs one property read per response.
 */
export function registerLingeringClose(app: FastifyInstance, limits: LingerLimits = DEFAULT_LINGER): void {
  app.addHook('onSend', (request, reply, payload, done) => {
    if (!request.raw.complete) {
      reply.header('connection', 'close');
      lingerWhenClosing(request.raw, reply.raw.socket, limits);
    }
    done(null, payload);
  });
}

/**
 * Starts discarding the rest of the body now (so Node does not pause the socket or throw the
 * body away uncounted), and replaces the socket's close-after-answer with: wait for the end
 * of the body, or the limits, then close.
 *
 * The body must not have been destroyed: a destroyed request can no longer be read, and its
 * connection then closes at once, as Node does. Upload code reads bodies through
 * `readable.iterator({ destroyOnReturn: false })` for that reason.
 */
export function lingerWhenClosing(request: IncomingMessage, socket: Socket | null, limits: LingerLimits): void {
  const closable = socket as (Socket & { destroySoon?: () => void }) | null;
  if (!closable || closable.destroyed || request.destroyed || typeof closable.destroySoon !== 'function') return;
  let drained = 0;
  let lingering: NodeJS.Timeout | undefined;
  const cutOff = () => {
    clearTimeout(lingering);
    closable.destroy();
  };
  request.on('data', (chunk: Buffer) => {
    drained += chunk.byteLength;
    if (lingering && drained > limits.maxBytes) cutOff();
  });
  request.resume();

  const closeSoon = closable.destroySoon;
  closable.destroySoon = function linger(this: Socket) {
    closable.destroySoon = closeSoon;
    // Everything the client sent is read: no RST can follow, the usual close is right.
    if (request.complete) return closeSoon.call(this);
    // Bytes drained before the answer was flushed count against the limit too.
    if (drained > limits.maxBytes) return cutOff();
    lingering = setTimeout(cutOff, limits.maxMs);
    lingering.unref();
    closable.once('close', () => clearTimeout(lingering));
    request.once('end', () => {
      clearTimeout(lingering);
      closeSoon.call(closable);
    });
  };
}
