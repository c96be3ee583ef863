import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import nodemailer from 'nodemailer';
import type { Logger } from 'pino';
import type { Mailer, MailMessage } from '../../core/ports.ts';

/**
 * The embedded mail driver: each mail becomes an RFC 5322 `.eml` file under the given
 * folder (`<data dir>/mail/`), readable by any mail client. Only the recipient and subject
 * are logged; the body may hold a secret. Files are written 0600 and renamed into place,
 * so a reader never sees half a mail.
 */
export class FileMailer implements Mailer {
  // nodemailer's stream transport only builds the MIME message; nothing leaves the process.
  private readonly composer = nodemailer.createTransport({ streamTransport: true, buffer: true, newline: 'unix' });

  constructor(
    private readonly folder: string,
    private readonly from: string,
    private readonly logger: Logger,
  ) {}

  async send(message: MailMessage): Promise<void> {
    // An SMTP server would refuse it; so does this driver, so both fail the same way.
    if (!/^[^@\s<>]+@[^@\s<>]+$/.test(message.to)) throw new Error(`not a mail address: ${JSON.stringify(message.to)}`);
    const info = await this.composer.sendMail({ from: this.from, to: message.to, subject: message.subject, text: message.text, html: message.html });
    await fs.mkdir(this.folder, { recursive: true, mode: 0o700 });
    const name = `${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(4).toString('hex')}.eml`;
    const file = path.join(this.folder, name);
    await fs.writeFile(`${file}.tmp`, info.message as Buffer, { mode: 0o600 });
    await fs.rename(`${file}.tmp`, file);
    this.logger.info({ to: message.to, subject: message.subject, file }, 'mail written');
  }

  async close(): Promise<void> {
    this.composer.close();
  }
}
