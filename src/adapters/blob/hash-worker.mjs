// The SHA-256 thread of ContentHash (content-hash.ts): hashes the batches it is sent, one hash
// per upload, and answers each batch (flow control, and its buffer back) and each digest. Plain JavaScript, so it
// loads the same under tsx and under plain Node.
import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

const hashes = new Map();

parentPort.on('message', (message) => {
  if (message.op === 'update') {
    const hash = hashes.get(message.id) ?? createHash('sha256');
    hashes.set(message.id, hash);
    hash.update(new Uint8Array(message.bytes, 0, message.length));
    // The buffer goes back, for the upload's next batch.
    parentPort.postMessage({ op: 'updated', id: message.id, bytes: message.bytes }, [message.bytes]);
  } else if (message.op === 'digest') {
    const hash = hashes.get(message.id) ?? createHash('sha256');
    hashes.delete(message.id);
    parentPort.postMessage({ op: 'digest', id: message.id, hex: hash.digest('hex') });
  } else if (message.op === 'drop') {
    hashes.delete(message.id);
  }
});
