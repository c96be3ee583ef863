import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { SMTPServer } from 'smtp-server';

/** Mail written by the default driver: `.eml` files under `<data dir>/mail/`. */

/** Waits (bounded) until the mail folder holds `count` files; returns their paths, oldest first. */
export async function waitForMails(dataDir: string, count: number): Promise<string[]> {
  const folder = path.join(dataDir, 'mail');
  for (let attempt = 0; attempt < 200; attempt++) {
    const files = (await fs.readdir(folder).catch(() => [] as string[])).filter((f) => f.endsWith('.eml')).sort();
    if (files.length >= count) return files.map((f) => path.join(folder, f));
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`expected ${count} mail(s) in ${folder}`);
}

/** The text of a quoted-printable mail body, as a mail client would show it. */
export const decodeQuotedPrintable = (mail: string) =>
  mail.replace(/=\r?\n/g, '').replace(/=([0-9A-F]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));

/** The password reset token a mail carries (fails the test when there is none). */
export function resetTokenIn(mail: string): string {
  const match = /prt_[A-Za-z0-9_-]{43}/.exec(decodeQuotedPrintable(mail));
  assert.ok(match, 'the mail carries a reset token');
  return match[0];
}

export interface ReceivedMail {
  to: string[];
  data: string;
}

/** A real SMTP server on loopback (smtp-server), for the SMTP_URL driver: what it received, in order. */
export interface SmtpReceiver {
  url: string;
  received: ReceivedMail[];
  /** Resolves when the next mail arrives. */
  nextMail(): Promise<ReceivedMail>;
  close(): Promise<void>;
}

export async function startSmtpReceiver(): Promise<SmtpReceiver> {
  const received: ReceivedMail[] = [];
  const waiting: Array<(mail: ReceivedMail) => void> = [];
  const smtp = new SMTPServer({
    authOptional: true,
    disabledCommands: ['STARTTLS'],
    logger: false,
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('end', () => {
        const mail = { to: session.envelope.rcptTo.map((r) => r.address), data: Buffer.concat(chunks).toString('utf8') };
        received.push(mail);
        for (const resolve of waiting.splice(0)) resolve(mail);
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => smtp.listen(0, '127.0.0.1', () => resolve()));
  const { port } = smtp.server.address() as AddressInfo;
  return {
    url: `smtp://127.0.0.1:${port}`,
    received,
    nextMail: () => new Promise((resolve) => waiting.push(resolve)),
    close: () => new Promise<void>((resolve) => smtp.close(() => resolve())),
  };
}
