import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FilesExportPort, FilesPort } from '../../core/service-ports.ts';
import type { Route } from '../../gateway/routes.ts';
import type { ServiceMigrations, ServiceModule } from '../../platform/module.ts';
import { FilesExportSource } from './domain/export-source.ts';
import { type FilesDeps, FilesService } from './domain/files.service.ts';
import { filesInternalRoutes } from './http/files.internal-routes.ts';
import { filesRoutes } from './http/files.routes.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Files: metadata, immutable content blobs per version, and the File_* events. */
export const filesMigrations: ServiceMigrations = {
  environment: [{ service: 'files', folder: path.join(here, 'migrations') }],
};

/** How often expired idempotency answers and orphan blobs are swept (also once at start). */
const SWEEP_EVERY_MS = 10 * 60 * 1000;

export interface FilesModule extends ServiceModule {
  service: FilesService;
  /** What the backup reaches of files, in-process. */
  port: FilesPort;
  /** What the exports read of files, in-process. */
  exportSource: FilesExportPort;
  /** Reached by other services over HTTP when distributed (the backup's restore); never through the gateway. */
  internalRoutes: Route[];
}

export function createFilesService(deps: FilesDeps): FilesModule {
  const service = new FilesService(deps);
  const exportSource = new FilesExportSource(deps);
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> = Promise.resolve();
  const sweep = () => {
    running = service.sweep().catch((error) => deps.logger.warn({ err: error }, 'files sweep failed; retrying later'));
  };
  return {
    name: 'files',
    service,
    port: service,
    exportSource,
    routes: filesRoutes(service),
    internalRoutes: filesInternalRoutes(service, exportSource),
    consumers: [],
    /** Starts the periodic sweep; the first one runs in the background right away. */
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
