/**
 * s3rver in a process of its own for the S3 pairs (bench/s3.bench.ts), as an S3 service is
 * another server: its CPU is not the bench process's. Prints its endpoint and its folder on
 * one line of stdout, then serves until it is stopped; the bench removes the folder.
 */
import { startS3rver } from '../../test/helpers/s3.ts';

const s3 = await startS3rver();
process.stdout.write(`${s3.endpoint} ${s3.directory}\n`);
