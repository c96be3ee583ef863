import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { Mailer } from '../../core/ports.ts';

/**
 * The contract every Mailer driver passes. `deliver` sends through the driver and returns
 * the raw RFC 5322 message as the far side received it (the .eml file, the SMTP DATA).
 */
export function mailerContract(make: () => Promise<{ mailer: Mailer; received: () => Promise<string[]>; close: () => Promise<void> }>): void {
  it('delivers recipient, subject, text and an optional HTML part', async () => {
    const { mailer, received, close } = await make();
    try {
      await mailer.send({ to: 'ana@example.com', subject: 'Hello Ana', text: 'line one\nsecret-token-123\n' });
      await mailer.send({ to: 'ben@example.com', subject: 'With HTML', text: 'plain', html: '<p>rich</p>' });
      const messages = await received();
      assert.equal(messages.length, 2);
      const [first, second] = messages as [string, string];
      assert.match(first, /^To: ana@example\.com\r?$/m);
      assert.match(first, /^Subject: Hello Ana\r?$/m);
      assert.match(first, /^From: .*no-reply@bantu\.test/m);
      assert.match(first, /secret-token-123/);
      assert.match(second, /multipart\/alternative/);
      assert.match(second, /<p>rich<\/p>/);
    } finally {
      await close();
    }
  });

  it('rejects when the mail cannot be delivered, instead of losing it silently', async () => {
    const { mailer, close } = await make();
    try {
      await assert.rejects(mailer.send({ to: 'not an address', subject: 'x', text: 'x' }));
    } finally {
      await close();
    }
  });
}
