import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceMigrations, ServiceModule } from '../../platform/module.ts';
import { type ExportsDeps, ExportsService } from './domain/exports.service.ts';
import { exportsRoutes } from './http/exports.routes.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Exports: the live JSON / NDJSON export, and zip exports mailed as signed links. */
export const exportsMigrations: ServiceMigrations = {
  environment: [{ service: 'exports', folder: path.join(here, 'migrations') }],
};

/** How often the worker looks for exports another process queued (its own wake it at once). */
const POLL_MS = 1000;
/** How often expired exports are swept (also once when the worker starts). */
const SWEEP_EVERY_MS = 10 * 60 * 1000;

export interface ExportsModule extends ServiceModule {
  service: ExportsService;
}

/**
 * The module. Its routes run in every exports process; its worker (the job queue and the
 * sweep) only where `start` is called: by the process leading `exports`, one per installation.
 */
export function createExportsService(deps: Omit<ExportsDeps, 'onCreated'>): ExportsModule {
  let wake: (() => void) | undefined;
  // Set by a new export while the worker is looking for one, when there is no idle to end yet:
  // that look may have missed it, so the worker looks again instead of waiting for the poll.
  let woken = false;
  const service = new ExportsService({
    ...deps,
    onCreated: () => {
      woken = true;
      wake?.();
    },
  });
  let running = false;
  let loop: Promise<void> = Promise.resolve();
  let sweeper: NodeJS.Timeout | undefined;
  let sweeping: Promise<unknown> = Promise.resolve();
  const sweep = () => {
    sweeping = service.sweep().catch((error) => deps.logger.warn({ err: error }, 'exports sweep failed; retrying later'));
  };
  const idle = () =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(() => resolve(), POLL_MS);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  const work = async () => {
    await service.recover();
    while (running) {
      woken = false;
      const ran = await service.runNext().catch((error) => {
        deps.logger.error({ err: error }, 'exports worker failed; retrying');
        return false;
      });
      if (!ran && running && !woken) await idle();
    }
  };
  return {
    name: 'exports',
    service,
    routes: exportsRoutes({ files: deps.files, exports: service }),
    consumers: [],
    start() {
      running = true;
      loop = work().catch((error) => deps.logger.error({ err: error }, 'exports worker stopped'));
      sweep();
      sweeper = setInterval(sweep, SWEEP_EVERY_MS);
      sweeper.unref();
    },
    async close() {
      running = false;
      service.stop();
      wake?.();
      if (sweeper) clearInterval(sweeper);
      await Promise.all([loop, sweeping]);
    },
  };
}
