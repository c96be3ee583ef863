#!/usr/bin/env node
// The container's health probe (the Dockerfile's HEALTHCHECK, compose.yaml's healthchecks):
//   node scripts/container-healthcheck.mjs [/healthz | /readyz]
// Exits 0 when this container's Bantu process answers 200 on that path (default /healthz),
// 1 otherwise. The slim image has no curl or wget, hence Node.
//
// Which port answers depends on the command: a service alone (`bantu serve <name>`, all but
// the gateway) listens in plain HTTP on BANTU_SERVICE_PORT; the gateway and `bantu start`
// in HTTPS on BANTU_PORT. The probe asks both on loopback and passes when either says 200,
// so the one image-wide HEALTHCHECK fits every command. It needs BANTU_SERVICE_HOST and
// BANTU_HOST to include loopback (the image's 0.0.0.0 does).
//
// The certificate is not verified: it is self-signed, or the operator's own, issued for a
// public name rather than 127.0.0.1. Nothing secret is sent or read.
import http from 'node:http';
import https from 'node:https';

const path = process.argv[2] ?? '/healthz';
const TIMEOUT_MS = 3000;

/** Resolves to the status code, or to the reason there is none; never rejects. */
function probe(client, port, options = {}) {
  if (!port || port === '0') return Promise.resolve('no fixed port');
  return new Promise((resolve) => {
    const request = client.get({ host: '127.0.0.1', port, path, timeout: TIMEOUT_MS, ...options }, (response) => {
      response.resume();
      resolve(response.statusCode);
    });
    request.on('timeout', () => request.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
    request.on('error', (error) => resolve(error.code ?? error.message));
  });
}

const [service, gateway] = await Promise.all([
  probe(http, process.env.BANTU_SERVICE_PORT),
  probe(https, process.env.BANTU_PORT ?? '8443', { rejectUnauthorized: false }),
]);
// One line for `docker inspect` (it keeps the probe's output).
console.log(`http :${process.env.BANTU_SERVICE_PORT ?? '-'}${path} ${service}; https :${process.env.BANTU_PORT ?? '8443'}${path} ${gateway}`);
process.exit(service === 200 || gateway === 200 ? 0 : 1);
