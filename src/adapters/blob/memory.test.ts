import { blobStoreContract } from './blob-store.contract.ts';
import { MemoryBlobStore } from './memory.ts';

// The unit tests' blob store keeps the same promises as the disk driver.
blobStoreContract('memory', {
  make: async () => new MemoryBlobStore(),
  inFlight: async (store) => (store as MemoryBlobStore).pending,
});
