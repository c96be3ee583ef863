import { createHash, type Hash } from 'node:crypto';
import { Worker } from 'node:worker_threads';

/**
 * The SHA-256 of an upload, computed off the main thread once it is large. Hashing costs
 * about as much CPU as the TLS that brings the bytes (some 60 ms per 100 MiB on the 2-core
 * machine), and on the main thread it held a 100 MiB upload at 0.70 of a bare streamed
 * write (0.91 without it).
 *
 * Up to BATCH_BYTES are hashed in place: a small upload, the usual one, never pays for a
 * message. Past that, every byte goes to one shared hashing thread, in copies of about
 * BATCH_BYTES whose memory is transferred, with at most IN_FLIGHT of them unanswered per
 * upload: memory stays bounded however fast the client sends.
 */
const BATCH_BYTES = 1024 * 1024;
const IN_FLIGHT = 4;

interface Waiter<T> {
  resolve(value: T): void;
  reject(error: Error): void;
}

type Reply = { op: 'updated'; id: number; bytes: ArrayBuffer } | { op: 'digest'; id: number; hex: string };

/** The hashing thread: started on first use, shared by every upload, keeping the process alive only while it has work. */
class HashThread {
  private worker: Worker | undefined;
  private nextId = 0;
  /** Messages not yet answered: the thread holds the process open while there are any. */
  private unanswered = 0;
  private readonly updates = new Map<number, Waiter<ArrayBuffer>[]>();
  private readonly digests = new Map<number, Waiter<string>>();

  open(): number {
    const id = this.nextId++;
    this.updates.set(id, []);
    return id;
  }

  /**
   * Hashes the first `length` bytes of `bytes`, which moves to the thread and comes back
   * once hashed (so an upload reuses its few buffers instead of leaving one per batch to
   * the thread's garbage collector: a 1 GiB upload grew the process by 77 MiB that way).
   */
  update(id: number, bytes: ArrayBuffer, length: number): Promise<ArrayBuffer> {
    return new Promise((resolve, reject) => {
      this.updates.get(id)?.push({ resolve, reject });
      this.send({ op: 'update', id, bytes, length }, [bytes]);
    });
  }

  digest(id: number): Promise<string> {
    return new Promise((resolve, reject) => {
      this.digests.set(id, { resolve, reject });
      this.send({ op: 'digest', id });
    });
  }

  drop(id: number): void {
    this.updates.delete(id);
    this.digests.delete(id);
    this.worker?.postMessage({ op: 'drop', id });
  }

  private send(message: object, transfer: ArrayBuffer[] = []): void {
    const worker = this.thread();
    if (this.unanswered++ === 0) worker.ref();
    worker.postMessage(message, transfer);
  }

  private thread(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(new URL('./hash-worker.mjs', import.meta.url));
    worker.on('message', (reply: Reply) => {
      if (--this.unanswered === 0) worker.unref();
      if (reply.op === 'updated') {
        this.updates.get(reply.id)?.shift()?.resolve(reply.bytes);
      } else {
        const waiter = this.digests.get(reply.id);
        this.digests.delete(reply.id);
        this.updates.delete(reply.id);
        waiter?.resolve(reply.hex);
      }
    });
    worker.on('error', (error) => {
      // Every upload hashing there fails (its blob is not kept); the next one starts a thread.
      this.worker = undefined;
      this.unanswered = 0;
      for (const waiters of this.updates.values()) for (const waiter of waiters) waiter.reject(error);
      for (const waiter of this.digests.values()) waiter.reject(error);
      this.updates.clear();
      this.digests.clear();
    });
    // Idle until sent something (after the listeners: adding one refs the worker again).
    worker.unref();
    this.worker = worker;
    return worker;
  }
}

const thread = new HashThread();

export class ContentHash {
  /** Set while every byte so far fits in one batch (hashed here); then the thread's id. */
  private local: Hash | undefined = createHash('sha256');
  private id: number | undefined;
  /** Bytes not yet sent: while local, every byte so far (sent at once if the upload grows). */
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private readonly inFlight: Promise<ArrayBuffer>[] = [];
  /** Buffers back from the thread, for the next batches. */
  private readonly spare: ArrayBuffer[] = [];

  /**
   * Adds bytes. Returns a promise only when the caller must wait (IN_FLIGHT batches are
   * still with the hashing thread): no promise per chunk on an upload's hot loop.
   */
  update(chunk: Uint8Array): Promise<void> | undefined {
    this.pending.push(chunk);
    this.pendingBytes += chunk.byteLength;
    if (this.local) {
      if (this.pendingBytes <= BATCH_BYTES) {
        this.local.update(chunk);
        return undefined;
      }
      // Too large to hash here: the thread starts from the first byte, which is still pending.
      this.local = undefined;
      this.id = thread.open();
    }
    return this.pendingBytes >= BATCH_BYTES ? this.send() : undefined;
  }

  /** The hex digest of every byte given. */
  async digest(): Promise<string> {
    if (this.local) return this.local.digest('hex');
    if (this.pendingBytes > 0) await this.send();
    await Promise.all(this.inFlight.splice(0));
    this.spare.length = 0;
    return thread.digest(this.id as number);
  }

  /** The upload failed: the thread forgets it. */
  abandon(): void {
    if (this.id !== undefined) thread.drop(this.id);
  }

  /** Sends what is pending; returns a promise when IN_FLIGHT batches are out (wait for the oldest). */
  private send(): Promise<void> | undefined {
    const length = this.pendingBytes;
    const reused = this.spare.pop();
    // Twice a batch: a batch is at least BATCH_BYTES and overshoots it by at most one chunk.
    const buffer = reused && reused.byteLength >= length ? reused : new ArrayBuffer(Math.max(2 * BATCH_BYTES, length));
    const batch = new Uint8Array(buffer);
    let offset = 0;
    for (const chunk of this.pending) {
      batch.set(chunk, offset);
      offset += chunk.byteLength;
    }
    this.pending = [];
    this.pendingBytes = 0;
    const sent = thread.update(this.id as number, buffer, length);
    sent.catch(() => undefined); // seen by whoever awaits it (below, or digest)
    this.inFlight.push(sent);
    if (this.inFlight.length < IN_FLIGHT) return undefined;
    return (this.inFlight.shift() as Promise<ArrayBuffer>).then((buffer) => void this.spare.push(buffer));
  }
}
