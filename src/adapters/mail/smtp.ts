import nodemailer, { type Transporter } from 'nodemailer';
import type { Logger } from 'pino';
import type { Mailer, MailMessage } from '../../core/ports.ts';

/**
 * Mail through an SMTP server (`SMTP_URL`, e.g. `smtps://user:pass@host:465` or
 * `smtp://host:587`; nodemailer upgrades with STARTTLS when the server offers it).
 * Connections are pooled. Only the recipient and subject are logged.
 */
export class SmtpMailer implements Mailer {
  private readonly transport: Transporter;

  constructor(
    smtpUrl: string,
    private readonly from: string,
    private readonly logger: Logger,
  ) {
    const url = new URL(smtpUrl);
    url.searchParams.set('pool', 'true');
    this.transport = nodemailer.createTransport(url.toString());
  }

  async send(message: MailMessage): Promise<void> {
    const info = await this.transport.sendMail({ from: this.from, to: message.to, subject: message.subject, text: message.text, html: message.html });
    this.logger.info({ to: message.to, subject: message.subject, message_id: info.messageId }, 'mail sent');
  }

  async close(): Promise<void> {
    this.transport.close();
  }
}
