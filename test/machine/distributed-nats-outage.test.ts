import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Deployment, startDeployment } from '../helpers/distributed.ts';
import { uploadRaw } from '../helpers/files.ts';
import { type PrivateNats, startPrivateNats } from '../helpers/nats.ts';

/**
 * Distributed mode while NATS itself is away: the registry cannot be asked, which says nothing
 * about the instances, so the gateway keeps routing to those it knows; writes keep committing
 * (the outbox holds their events), and all is as before once NATS is back.
 */
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('distributed mode with NATS down', () => {
  let nats: PrivateNats;
  let deployment: Deployment;
  before(async () => {
    nats = await startPrivateNats();
    deployment = await startDeployment({ instances: { files: 1, notifications: 0, backup: 0 }, env: { NATS_URL: nats.url } });
  });
  after(async () => {
    await deployment?.close();
    await nats?.close();
  });

  it('nats-server killed: reads and writes keep going through the gateway well past the registry timeout; back: the same instances', async () => {
    const key = deployment.keys.test.account_key;
    await nats.kill('SIGKILL');
    // Longer than an instance may stay silent before the gateway forgets it (about 3.5 s).
    await sleep(8000);
    for (let i = 0; i < 5; i++) {
      assert.equal((await deployment.request('GET', '/v1/keys', { auth: key })).status, 200, 'identity still reached');
      assert.equal((await uploadRaw(deployment, key, `during ${i}`, { name: `during-${i}.txt` })).status, 201, 'files still reached');
    }
    const ready = await deployment.request('GET', '/readyz');
    assert.equal(ready.json.dependencies.nats.status, 'down');
    assert.deepEqual({ identity: ready.json.services.identity.instances, files: ready.json.services.files.instances }, { identity: 1, files: 1 });

    await nats.start();
    await deployment.waitForInstances({ identity: 1, files: 1 }, 30_000);
    const listed = await deployment.request('GET', '/v1/files?limit=200', { auth: key });
    assert.equal(listed.json.data.filter((file: { name: string }) => file.name.startsWith('during-')).length, 5);
  });
});
