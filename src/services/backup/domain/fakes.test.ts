import { backupRepositoryContract } from './backup.repository.contract.ts';
import { MemoryBackupRepository } from './fakes.ts';

// The unit tests' repository keeps the same promises as the PostgreSQL one (test/backup-repository.test.ts).
backupRepositoryContract('memory', {
  open: async () => ({ repository: new MemoryBackupRepository(), close: async () => undefined }),
});
