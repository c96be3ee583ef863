import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MigrationSet } from '../../adapters/db/pg.ts';
import type { Route } from '../../gateway/routes.ts';
import { type FilesDeps, FilesService } from './domain/files.service.ts';
import { filesRoutes } from './http/files.routes.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Files: metadata, immutable content blobs per version, and the File_* events. */
export const filesMigrations = {
  environment: [{ service: 'files', folder: path.join(here, 'migrations') }] as MigrationSet[],
};

/** How often expired idempotency answers and orphan blobs are swept (also once at start). */
const SWEEP_EVERY_MS = 10 * 60 * 1000;

export interface FilesModule {
  service: FilesService;
  routes: Route[];
  /** Starts the periodic sweep; the first one runs in the background right away. */
  start(): void;
  close(): Promise<void>;
}

export function createFilesService(deps: FilesDeps): FilesModule {
  const service = new FilesService(deps);
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> = Promise.resolve();
  const sweep = () => {
    running = service.sweep().catch((error) => deps.logger.warn({ err: error }, 'files sweep failed; retrying later'));
  };
  return {
    service,
    routes: filesRoutes(service),
    start() {
      sweep();
      timer = setInterval(sweep, SWEEP_EVERY_MS);
      timer.unref();
    },
    async close() {
      if (timer) clearInterval(timer);
      await running;
    },
  };
}
