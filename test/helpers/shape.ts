/**
 * The shape the end-to-end suites run in (DESIGN.md, "One code base, two shapes"): in-process
 * (`npm test` on embedded PostgreSQL, `npm run test:machine` on the machine's), or distributed
 * (`npm run test:distributed`, BANTU_TEST_SHAPE=distributed): `startServer` then starts a
 * deployment of `bantu serve` processes behind a gateway (test/helpers/distributed-server.ts).
 * A third, `npm run test:s3` (BANTU_TEST_SHAPE=s3): in-process, with files and backups in S3
 * (s3rver, one per test file: test/helpers/s3-shape.ts) instead of folders of the data dir.
 */
export const distributed = process.env.BANTU_TEST_SHAPE === 'distributed';
export const s3 = process.env.BANTU_TEST_SHAPE === 's3';

/**
 * The `skip` option of a test that only the in-process shape can run, with the reason it cannot
 * run distributed: `it(name, { skip: inProcessOnly('needs app.identity in-process') }, ...)`.
 * False in the in-process shape, so there it runs as always.
 */
export function inProcessOnly(reason: string): string | false {
  return distributed ? `in-process shape only: ${reason}` : false;
}

/**
 * The `skip` option of a test that finds a known bug of the distributed shape, until it is
 * fixed: the test runs in-process as always, and the reason names the bug (see the issue notes).
 */
export function knownDistributedBug(bug: string): string | false {
  return distributed ? `known distributed-mode bug: ${bug}` : false;
}

/**
 * The `skip` option of a test that finds a known bug of the S3 shape, until it is fixed: the
 * test runs in the other shapes as always, and the reason names the bug (see the issue notes).
 */
export function knownS3Bug(bug: string): string | false {
  return s3 ? `known S3 bug: ${bug}` : false;
}
