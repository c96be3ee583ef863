#!/usr/bin/env node
// Runs every test file with Node's test runner (TypeScript through tsx).
//   npm test                 unit tests and end-to-end tests on embedded PostgreSQL
//   npm run test:machine     the same end-to-end suite against the machine's PostgreSQL
//                            (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres),
//                            plus test/machine/ (tests that need NATS or Redis)
//   npm run test:distributed the end-to-end suites of identity, files, notifications and backup
//                            once more against a distributed deployment that each suite starts
//                            (--distributed: BANTU_TEST_SHAPE=distributed; test/helpers/shape.ts)
//   npm run test:s3          the end-to-end suites of files and backup once more with files and
//                            backups in S3: an s3rver per test file (--s3: BANTU_TEST_SHAPE=s3)
// Extra arguments are test files or folders to run instead of all.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const args = process.argv.slice(2);
const machine = args.includes('--machine');
const distributed = args.includes('--distributed');
const s3 = args.includes('--s3');
const targets = args.filter((a) => !a.startsWith('--'));

function collect(dir, out) {
  if (!fs.existsSync(dir)) return out;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (entry.name === 'node_modules' || (entry.name === 'machine' && !machine)) continue;
      collect(full, out);
    } else if (entry.name.endsWith('.test.ts')) out.push(full);
  }
  return out;
}

const files = (targets.length ? targets : ['src', 'test']).flatMap((t) => (fs.statSync(t).isDirectory() ? collect(t, []) : [t])).sort();
if (files.length === 0) {
  console.error('no test files found');
  process.exit(1);
}
const env = { ...process.env };
if (machine) env.BANTU_TEST_DATABASE_URL ??= process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
else delete env.BANTU_TEST_DATABASE_URL;
if (distributed && s3) {
  console.error('--distributed and --s3 are two shapes: choose one');
  process.exit(2);
}
if (distributed) env.BANTU_TEST_SHAPE = 'distributed';
else if (s3) env.BANTU_TEST_SHAPE = 's3';
else delete env.BANTU_TEST_SHAPE;
const result = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-concurrency=2', '--test-timeout=900000', ...files],
  { stdio: 'inherit', env },
);
process.exit(result.status ?? 1);
