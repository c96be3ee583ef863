// The reference for files/upload-1gib-peak-rss: a bare Node HTTPS server where PUT /upload/<name>
// streams the body to <dir>/<name>.tmp (1 MiB writes, fsync on close), renames it, fsyncs <dir> and answers 201,
// as the in-process reference of bench/files.bench.ts does. Run as a child process so its memory
// can be read on its own: node bare-upload-server.mjs <cert> <key> <dir>; prints its port.
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';

const MiB = 1024 * 1024;
const [certFile, keyFile, dir] = process.argv.slice(2);
const server = https.createServer({ cert: await fs.readFile(certFile), key: await fs.readFile(keyFile) }, (request, response) => {
  if (request.method !== 'PUT') {
    response.writeHead(405).end();
    return;
  }
  const file = path.join(dir, path.basename(request.url ?? 'x'));
  const temp = `${file}.tmp`;
  pipeline(request, createWriteStream(temp, { flush: true, highWaterMark: MiB }))
    .then(() => fs.rename(temp, file))
    .then(async () => {
      const folder = await fs.open(dir, 'r');
      await folder.sync().finally(() => folder.close());
    })
    .then(
      () => response.writeHead(201, { 'content-type': 'application/json' }).end('{"ok":true}'),
      () => response.writeHead(500).end(),
    );
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
