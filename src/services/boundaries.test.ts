import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

/**
 * The seams between services, checked on the source: a service reaches another only through
 * a port in src/core (wired by a composition root), never by importing its code; domain and
 * repo code never see HTTP or Socket.IO. A service that imports another could not run alone.
 */
const servicesDir = path.dirname(fileURLToPath(import.meta.url));
const srcDir = path.dirname(servicesDir);

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(full);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') ? [full] : [];
  });
}

/** Every module specifier a file imports or re-exports (static and dynamic), resolved when relative. */
export function importsOf(file: string, text = fs.readFileSync(file, 'utf8')): string[] {
  const specifiers = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+'([^']+)'|import\(\s*'([^']+)'\s*\)/g)].map((m) => m[1] ?? m[2] ?? '');
  return specifiers.map((s) => (s.startsWith('.') ? path.resolve(path.dirname(file), s) : s));
}

const services = fs.readdirSync(servicesDir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);

describe('service boundaries', () => {
  it('finds the services and their imports (the check below has something to check)', () => {
    assert.ok(services.includes('files') && services.includes('backup') && services.includes('identity'), services.join(','));
    const backupRoutes = importsOf(path.join(servicesDir, 'backup', 'http', 'backup.routes.ts'));
    assert.ok(backupRoutes.some((s) => s.endsWith(path.join('gateway', 'routes.ts'))), backupRoutes.join('\n'));
    // The parser sees a cross-service import when there is one.
    const fake = importsOf(path.join(servicesDir, 'backup', 'x.ts'), "import { FilesService } from '../files/domain/files.service.ts';\n");
    assert.deepEqual(fake, [path.join(servicesDir, 'files', 'domain', 'files.service.ts')]);
  });

  for (const service of services) {
    it(`${service} imports no other service, no bus driver and no composition root`, () => {
      const offenders: string[] = [];
      for (const file of sourceFiles(path.join(servicesDir, service))) {
        for (const target of importsOf(file)) {
          const relative = path.relative(srcDir, target);
          const [top, other] = relative.split(path.sep);
          const crossService = top === 'services' && other !== service && other !== undefined && !other.endsWith('.ts');
          const compositionRoot = relative === 'app.ts' || relative === 'serve.ts' || top === 'cli' || relative === path.join('platform', 'platform.ts');
          // The bus is reached through its port (core/ports.ts), so that another driver can replace it.
          const busDriver = relative.startsWith(path.join('adapters', 'bus'));
          if (crossService || compositionRoot || busDriver) offenders.push(`${path.relative(srcDir, file)} -> ${relative}`);
        }
      }
      assert.deepEqual(offenders, []);
    });
  }

  it('domain and repo code import no HTTP or Socket.IO (fastify, socket.io, the gateway)', () => {
    const offenders: string[] = [];
    for (const service of services) {
      for (const layer of ['domain', 'repo']) {
        const dir = path.join(servicesDir, service, layer);
        if (!fs.existsSync(dir)) continue;
        for (const file of sourceFiles(dir)) {
          for (const target of importsOf(file)) {
            const transport = /^(fastify|@fastify\/|socket\.io)/.test(target) || path.relative(srcDir, target).startsWith(`gateway${path.sep}`);
            if (transport) offenders.push(`${path.relative(srcDir, file)} -> ${target}`);
          }
        }
      }
    }
    assert.deepEqual(offenders, []);
  });
});
