import { io, type Socket } from 'socket.io-client';
import { io as ioV3 } from 'socket.io-client-v3';
import type { TestServer } from './server.ts';

/**
 * Real Socket.IO clients for the notifications tests, trusting the server's certificate.
 * `Inbox` records every Notify_* a socket receives, in arrival order.
 */
export interface Inbox {
  socket: Socket;
  events: Array<{ name: string; payload: { event_id: string; type: string; file: { id: string; name: string; version: number }; actor: unknown; occurred_at: string } }>;
  /** Waits until a notification matches, and returns it. */
  waitFor(match: (event: Inbox['events'][number]) => boolean, what: string, limitMs?: number): Promise<Inbox['events'][number]>;
  close(): void;
}

export function connect(server: Pick<TestServer, 'url' | 'ca'>, options: Record<string, unknown> = {}): Inbox {
  const socket = io(server.url, { path: '/socket.io/', transports: ['websocket'], ca: server.ca, reconnection: false, ...options });
  return record(socket);
}

/** A Socket.IO v3 client (the package socket.io-client-v3), recorded like a v4 one. */
export function connectV3(server: TestServer, options: Record<string, unknown> = {}): Inbox {
  const socket = ioV3(server.url, { path: '/socket.io/', transports: ['websocket'], ca: server.ca, reconnection: false, ...options } as Parameters<typeof ioV3>[1]);
  return record(socket as unknown as Socket);
}

export function record(socket: Socket): Inbox {
  const events: Inbox['events'] = [];
  socket.onAny((name: string, payload: Inbox['events'][number]['payload']) => {
    if (name.startsWith('Notify_')) events.push({ name, payload });
  });
  return {
    socket,
    events,
    async waitFor(match, what, limitMs = 20_000) {
      const deadline = Date.now() + limitMs;
      while (Date.now() < deadline) {
        const found = events.find(match);
        if (found) return found;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(events.map((e) => `${e.name}:${e.payload.file?.name}`))}`);
    },
    close: () => socket.close(),
  };
}

export type Ack = { ok: boolean; code?: string; user_id?: string | null };

/** Emits an event and resolves with its acknowledgement; with no payload given, sends the ack function alone. */
export function emitWithAck(socket: Socket, event: string, ...payload: unknown[]): Promise<Ack> {
  return socket.timeout(10_000).emitWithAck(event, ...payload);
}

/** The next `name` event the socket receives (rejects after `limitMs`, so a hang fails the test). */
export function nextEvent<T = Ack>(socket: Socket, name: string, limitMs = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(name, onEvent);
      reject(new Error(`timed out waiting for ${name}`));
    }, limitMs);
    const onEvent = (payload: T) => {
      clearTimeout(timer);
      resolve(payload);
    };
    socket.once(name, onEvent);
  });
}

export function connected(socket: Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.connected) return resolve();
    socket.once('connect', () => resolve());
    socket.once('connect_error', (error) => reject(error));
  });
}
