import type { FilesExportPort } from '../../core/ports.ts';
import type { ServiceModule } from '../../platform/module.ts';
import { exportsRoutes } from './http/exports.routes.ts';

/** Exports: the live JSON / NDJSON export of the visible files. */
export interface ExportsDeps {
  /** What exports read of files: in-process, or over HTTP when distributed. */
  files: FilesExportPort;
}

export function createExportsService(deps: ExportsDeps): ServiceModule {
  return {
    name: 'exports',
    routes: exportsRoutes(deps),
    consumers: [],
    start() {},
    close() {},
  };
}
