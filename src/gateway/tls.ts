import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { generate } from 'selfsigned';
import { writeSecretFile } from '../adapters/local/data-dir.ts';

export interface TlsMaterial {
  cert: string;
  key: string;
  /** SHA-256 fingerprint, as browsers and `openssl x509 -fingerprint -sha256` show it. */
  fingerprint: string;
  /** True when the certificate was made during this start. */
  generated: boolean;
  source: 'configured' | 'self-signed';
}

function fingerprintOf(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256;
}

/** A configured certificate or key that cannot be used; the message says which file and why. */
export class TlsConfigError extends Error {}

async function loadConfiguredTls(certFile: string, keyFile: string): Promise<TlsMaterial> {
  const read = async (file: string, variable: string) => {
    try {
      return await fs.readFile(file, 'utf8');
    } catch (error) {
      throw new TlsConfigError(`${variable} ${file} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  };
  const [cert, key] = await Promise.all([read(certFile, 'BANTU_TLS_CERT'), read(keyFile, 'BANTU_TLS_KEY')]);
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch {
    throw new TlsConfigError(`BANTU_TLS_CERT ${certFile} is not a PEM certificate`);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    throw new TlsConfigError(`BANTU_TLS_KEY ${keyFile} is not a PEM private key (or it is encrypted)`);
  }
  if (!certificate.checkPrivateKey(privateKey)) throw new TlsConfigError(`BANTU_TLS_KEY ${keyFile} is not the private key of BANTU_TLS_CERT ${certFile}`);
  return { cert, key, fingerprint: certificate.fingerprint256, generated: false, source: 'configured' };
}

/**
 * The configured certificate, or a self-signed one made once under the data dir
 * (`tls/cert.pem`, `tls/key.pem` 0600) and reused on every later start.
 */
export async function loadTls(options: { dataDir: string; certFile?: string; keyFile?: string; host: string }): Promise<TlsMaterial> {
  if (options.certFile && options.keyFile) return loadConfiguredTls(options.certFile, options.keyFile);
  const certFile = path.join(options.dataDir, 'tls', 'cert.pem');
  const keyFile = path.join(options.dataDir, 'tls', 'key.pem');
  try {
    const [cert, key] = await Promise.all([fs.readFile(certFile, 'utf8'), fs.readFile(keyFile, 'utf8')]);
    return { cert, key, fingerprint: fingerprintOf(cert), generated: false, source: 'self-signed' };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const altNames: Array<{ type: 2 | 7; value?: string; ip?: string }> = [
    { type: 2, value: 'localhost' },
    { type: 7, ip: '127.0.0.1' },
    { type: 7, ip: '::1' },
  ];
  if (options.host !== '127.0.0.1' && options.host !== 'localhost' && options.host !== '0.0.0.0') {
    altNames.push(/^[\d.]+$/.test(options.host) ? { type: 7, ip: options.host } : { type: 2, value: options.host });
  }
  const pems = await generate([{ name: 'commonName', value: 'Bantu self-signed' }], {
    keySize: 2048,
    algorithm: 'sha256',
    notAfterDate: new Date(Date.now() + 825 * 24 * 3600 * 1000),
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames },
    ],
  });
  await writeSecretFile(keyFile, pems.private);
  await fs.writeFile(certFile, pems.cert, { mode: 0o644 });
  return { cert: pems.cert, key: pems.private, fingerprint: fingerprintOf(pems.cert), generated: true, source: 'self-signed' };
}
