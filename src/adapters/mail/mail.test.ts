import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe } from 'node:test';
import pino from 'pino';
import { SMTPServer } from 'smtp-server';
import { FileMailer } from './files.ts';
import { mailerContract } from './mailer.contract.ts';
import { SmtpMailer } from './smtp.ts';

const FROM = 'Bantu <no-reply@bantu.test>';
const logger = pino({ level: 'silent' });

describe('FileMailer', () => {
  mailerContract(async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bantu-mail-'));
    const mailer = new FileMailer(path.join(dir, 'mail'), FROM, logger);
    return {
      mailer,
      async received() {
        const files = (await fs.readdir(path.join(dir, 'mail'))).filter((f) => f.endsWith('.eml')).sort();
        return Promise.all(files.map((f) => fs.readFile(path.join(dir, 'mail', f), 'utf8')));
      },
      async close() {
        await mailer.close();
        await fs.rm(dir, { recursive: true, force: true });
      },
    };
  });
});

describe('SmtpMailer', () => {
  mailerContract(async () => {
    const messages: string[] = [];
    const server = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onRcptTo(address, _session, callback) {
        // A real server refuses what is not an address; so does this one.
        callback(/^[^@\s]+@[^@\s]+$/.test(address.address) ? undefined : new Error('bad recipient'));
      },
      onData(stream, _session, callback) {
        const chunks: Buffer[] = [];
        stream.on('data', (chunk: Buffer) => chunks.push(chunk));
        stream.on('end', () => {
          messages.push(Buffer.concat(chunks).toString('utf8'));
          callback();
        });
      },
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const { port } = server.server.address() as AddressInfo;
    const mailer = new SmtpMailer(`smtp://127.0.0.1:${port}`, FROM, logger);
    return {
      mailer,
      // SMTP answers 250 only once the message is stored: by then onData has run.
      received: async () => messages,
      async close() {
        await mailer.close();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      },
    };
  });
});
