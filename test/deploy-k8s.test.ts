import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import Fastify from 'fastify';
import { Deployment } from 'kubernetes-models/apps/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ConfigMap, PersistentVolumeClaim, Secret, Service } from 'kubernetes-models/v1';
import { Registry } from 'prom-client';
import { parse, parseAllDocuments } from 'yaml';
import { EnvSchema } from '../src/core/config.ts';
import { registerOperations } from '../src/gateway/operations.ts';
import { SERVICE_NAMES } from '../src/platform/catalogue.ts';

/**
 * Static checks of deploy/k8s (no cluster here): the base and the overlay are built with
 * `kubectl kustomize` (.ci/run installs Debian's kubernetes-client when kubectl is missing),
 * then every service of the catalogue must have its Deployment and Service, probes on paths
 * the code serves, no root, a read-only root filesystem with the places Bantu writes mounted,
 * and only variables src/core/config.ts reads. Each check also runs on a broken copy, to show
 * it fails. Every object is also validated against the Kubernetes JSON schemas
 * (kubernetes-models; the kubectl here has no cluster to ask).
 */
const ROOT = path.join(import.meta.dirname, '..');
const K8S = path.join(ROOT, 'deploy', 'k8s');

// biome-ignore lint/suspicious/noExplicitAny: Kubernetes objects are checked field by field below.
type Manifest = { kind: string; metadata: { name: string; labels?: Record<string, string> }; spec?: any; data?: Record<string, string>; stringData?: Record<string, string> };

function kustomize(dir: string): Manifest[] {
  const result = spawnSync('kubectl', ['kustomize', path.join(K8S, dir)], { encoding: 'utf8' });
  assert.equal(result.error, undefined, 'kubectl is on the PATH (.ci/run installs kubernetes-client when it is missing)');
  assert.equal(result.status, 0, result.stderr);
  return parseAllDocuments(result.stdout).map((doc) => doc.toJS() as Manifest);
}

const secretTemplate = () => parse(fs.readFileSync(path.join(K8S, 'secret.template.yaml'), 'utf8')) as Manifest;
const CONFIG_NAMES = new Set(Object.keys(EnvSchema.properties));
const deployments = (all: Manifest[]) => all.filter((m) => m.kind === 'Deployment');
const served = (d: Manifest): string | undefined => {
  const [verb, name, ...rest] = d.spec?.template?.spec?.containers?.[0]?.args ?? [];
  return verb === 'serve' && rest.length === 0 ? name : undefined;
};
const selects = (selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) =>
  selector !== undefined && Object.entries(selector).every(([key, value]) => labels?.[key] === value);

/** The probe paths the code answers with 200, asked of registerOperations itself (what every Bantu process mounts). */
async function servedProbePaths(paths: string[]): Promise<Set<string>> {
  const app = Fastify();
  registerOperations(app, { metrics: new Registry(), checks: new Map() });
  const ok = new Set<string>();
  for (const url of paths) if ((await app.inject({ method: 'GET', url })).statusCode === 200) ok.add(url);
  await app.close();
  return ok;
}

function serviceProblems(all: Manifest[]): string[] {
  const problems: string[] = [];
  for (const name of SERVICE_NAMES) {
    const mine = deployments(all).filter((d) => served(d) === name);
    if (mine.length !== 1) {
      problems.push(`${name}: ${mine.length} Deployment(s) run "serve ${name}", want 1`);
      continue;
    }
    const deployment = mine[0] as Manifest;
    const podLabels = deployment.spec.template.metadata.labels;
    if (!selects(deployment.spec.selector?.matchLabels, podLabels)) problems.push(`${name}: the Deployment's selector does not match its pods`);
    const services = all.filter((m) => m.kind === 'Service' && selects(m.spec?.selector, podLabels));
    const ports = deployment.spec.template.spec.containers[0].ports?.map((p: { containerPort: number }) => p.containerPort) ?? [];
    if (services.length !== 1) problems.push(`${name}: ${services.length} Service(s) select its pods, want 1`);
    else if (!services[0]?.spec.ports.every((p: { targetPort: number }) => ports.includes(p.targetPort))) problems.push(`${name}: its Service targets a port the container does not expose`);
  }
  const images = new Set(deployments(all).flatMap((d) => d.spec.template.spec.containers.map((c: { image: string }) => c.image)));
  if (images.size !== 1) problems.push(`not one image for every service: ${[...images].join(', ')}`);
  return problems;
}

/** Liveness on /healthz, readiness on /readyz, on the port the process listens on (HTTPS for the gateway). */
function probeProblems(all: Manifest[]): string[] {
  const problems: string[] = [];
  for (const deployment of deployments(all)) {
    const name = served(deployment) ?? deployment.metadata.name;
    const container = deployment.spec.template.spec.containers[0];
    const env = Object.fromEntries((container.env ?? []).map((e: { name: string; value?: string }) => [e.name, e.value]));
    const config = all.find((m) => m.kind === 'ConfigMap')?.data ?? {};
    const port = Number(name === 'gateway' ? (env.BANTU_PORT ?? config.BANTU_PORT) : (env.BANTU_SERVICE_PORT ?? config.BANTU_SERVICE_PORT));
    const scheme = name === 'gateway' ? 'HTTPS' : 'HTTP';
    for (const [probe, wanted] of [['livenessProbe', '/healthz'], ['readinessProbe', '/readyz']] as const) {
      const get = container[probe]?.httpGet;
      if (get?.path !== wanted) problems.push(`${name}: ${probe} is not on ${wanted}`);
      else if (get.port !== port || get.scheme !== scheme) problems.push(`${name}: ${probe} asks ${get.scheme} ${get.port}, the process listens on ${scheme} ${port}`);
    }
    if (!container.resources?.requests?.cpu || !container.resources?.requests?.memory || !container.resources?.limits?.memory) {
      problems.push(`${name}: no cpu and memory requests or no memory limit`);
    }
  }
  return problems;
}

/** Not root, no privilege escalation, a read-only root filesystem with writable mounts wherever Bantu writes. */
function securityProblems(all: Manifest[]): string[] {
  const problems: string[] = [];
  const config = all.find((m) => m.kind === 'ConfigMap')?.data ?? {};
  for (const deployment of deployments(all)) {
    const name = served(deployment) ?? deployment.metadata.name;
    const pod = deployment.spec.template.spec;
    for (const container of [...(pod.initContainers ?? []), ...pod.containers]) {
      const context = { ...pod.securityContext, ...container.securityContext };
      if (context.runAsNonRoot !== true || context.runAsUser === 0 || context.runAsGroup === 0) problems.push(`${name}/${container.name}: may run as root`);
      if (context.allowPrivilegeEscalation !== false) problems.push(`${name}/${container.name}: allows privilege escalation`);
      if (context.readOnlyRootFilesystem !== true) problems.push(`${name}/${container.name}: root filesystem is writable`);
      const env = Object.fromEntries((container.env ?? []).map((e: { name: string; value?: string }) => [e.name, e.value]));
      const writes = ['/tmp', config.BANTU_DATA_DIR];
      if (name === 'files' || name === 'backup') writes.push(config.BANTU_BLOB_DIR);
      if (name === 'backup') writes.push(config.BANTU_BACKUP_DIR);
      if (name === 'exports') writes.push(env.BANTU_EXPORT_DIR ?? config.BANTU_EXPORT_DIR);
      const mounts = new Map((container.volumeMounts ?? []).map((m: { mountPath: string; name: string; readOnly?: boolean }) => [m.mountPath, m]));
      for (const dir of writes) {
        const mount = mounts.get(dir) as { name: string; readOnly?: boolean } | undefined;
        if (!dir || !mount || mount.readOnly) problems.push(`${name}: ${dir ?? 'a write dir'} is not a writable mount`);
        else if (!pod.volumes?.some((v: { name: string }) => v.name === mount.name)) problems.push(`${name}: mounts an undeclared volume ${mount.name}`);
      }
    }
  }
  return problems;
}

/** Every variable named (ConfigMap, env, the Secret template) is one src/core/config.ts reads; secrets come from the Secret. */
function variableProblems(all: Manifest[], secret: Manifest): string[] {
  const problems: string[] = [];
  const named = [
    ...Object.keys(all.find((m) => m.kind === 'ConfigMap')?.data ?? {}),
    ...Object.keys(secret.stringData ?? {}),
    ...deployments(all).flatMap((d) => d.spec.template.spec.containers.flatMap((c: { env?: Array<{ name: string }> }) => (c.env ?? []).map((e) => e.name))),
  ];
  for (const name of new Set(named)) if (!CONFIG_NAMES.has(name)) problems.push(`${name} is not a variable src/core/config.ts reads`);
  for (const key of ['BANTU_SECRET_KEY', 'BANTU_OPERATOR_TOKEN', 'DATABASE_URL', 'NATS_URL', 'REDIS_URL', 'S3_ACCESS_KEY_ID', 'S3_SECRET_ACCESS_KEY', 'S3_BUCKET']) {
    if (!(key in (secret.stringData ?? {}))) problems.push(`the Secret template has no ${key}`);
  }
  for (const deployment of deployments(all)) {
    const from = deployment.spec.template.spec.containers[0].envFrom ?? [];
    if (!from.some((f: { secretRef?: { name: string } }) => f.secretRef?.name === secret.metadata.name)) problems.push(`${served(deployment)}: does not read the Secret`);
  }
  return problems;
}

/** PodDisruptionBudgets for gateway and files; only the gateway open to all, the services to the gateway (and callers, scrapers) on 8080. */
function availabilityProblems(all: Manifest[]): string[] {
  const problems: string[] = [];
  const pods = Object.fromEntries(deployments(all).map((d) => [served(d), d.spec.template.metadata.labels]));
  for (const name of ['gateway', 'files']) {
    if (!all.some((m) => m.kind === 'PodDisruptionBudget' && selects(m.spec.selector?.matchLabels, pods[name]))) problems.push(`${name}: no PodDisruptionBudget`);
  }
  const policies = all.filter((m) => m.kind === 'NetworkPolicy');
  const matches = (selector: { matchLabels?: Record<string, string>; matchExpressions?: Array<{ key: string; operator: string; values: string[] }> }, labels: Record<string, string>) =>
    Object.entries(selector.matchLabels ?? {}).every(([k, v]) => labels[k] === v) &&
    (selector.matchExpressions ?? []).every((e) => e.operator === 'In' && e.values.includes(labels[e.key] ?? ''));
  for (const name of SERVICE_NAMES) {
    const labels = pods[name];
    if (!labels) continue;
    const covering = policies.filter((p) => matches(p.spec.podSelector, labels) && p.spec.policyTypes?.includes('Ingress'));
    if (covering.length === 0) {
      problems.push(`${name}: no NetworkPolicy restricts its ingress`);
      continue;
    }
    const rules = covering.flatMap((p) => p.spec.ingress ?? []);
    if (name === 'gateway') continue;
    for (const rule of rules) {
      const peers = rule.from ?? [];
      if (peers.length === 0) problems.push(`${name}: an ingress rule admits every pod`);
      const admitsGateway = peers.some((peer: { podSelector?: never; namespaceSelector?: unknown }) => peer.podSelector && !peer.namespaceSelector && matches(peer.podSelector, pods.gateway));
      if (!admitsGateway) problems.push(`${name}: the gateway cannot reach it`);
      for (const peer of peers) {
        const selector = peer.podSelector;
        if (!selector || (peer.namespaceSelector && selector.matchLabels?.['app.kubernetes.io/name'] !== 'prometheus')) problems.push(`${name}: admits pods other than Bantu's and Prometheus`);
      }
    }
  }
  return problems;
}

/** The schema of each kind the manifests use; a kind not listed here is a problem until it is added. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'apps/v1/Deployment': Deployment,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'v1/ConfigMap': ConfigMap,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim,
  'v1/Secret': Secret,
  'v1/Service': Service,
};

/** Each object, the Secret template with them, against the Kubernetes JSON schema of its kind. */
function schemaProblems(all: Manifest[], secret: Manifest): string[] {
  const problems: string[] = [];
  for (const manifest of [...all, secret]) {
    const kind = `${(manifest as { apiVersion?: string }).apiVersion}/${manifest.kind}`;
    const Model = MODELS[kind];
    if (!Model) {
      problems.push(`${manifest.metadata.name}: no schema for ${kind}`);
      continue;
    }
    try {
      new Model(structuredClone(manifest) as never).validate();
    } catch (error) {
      problems.push(`${manifest.metadata.name}: ${kind} does not match its schema: ${(error as Error).message}`);
    }
  }
  return problems;
}

const allProblems = (all: Manifest[], secret = secretTemplate()) => [
  ...schemaProblems(all, secret),
  ...serviceProblems(all),
  ...probeProblems(all),
  ...securityProblems(all),
  ...variableProblems(all, secret),
  ...availabilityProblems(all),
];

describe('deploy/k8s', () => {
  const base = kustomize('base');

  it('the base runs every service of the catalogue, probed, non-root, read-only, with only config.ts variables', () => {
    assert.deepEqual(allProblems(base), []);
  });

  it('the overlay example builds on it with two files replicas and the same checks passing', () => {
    const overlay = kustomize('overlays/two-files');
    assert.deepEqual(allProblems(overlay), []);
    const replicas = Object.fromEntries(deployments(overlay).map((d) => [served(d), d.spec.replicas]));
    assert.equal(replicas.files, 2);
    assert.equal(replicas.gateway, 2);
  });

  it('probes point at paths the code serves', async () => {
    const paths = deployments(base).flatMap((d) => ['livenessProbe', 'readinessProbe', 'startupProbe'].map((p) => d.spec.template.spec.containers[0][p]?.httpGet?.path).filter(Boolean));
    const ok = await servedProbePaths([...new Set(paths), '/no-such-probe']);
    assert.deepEqual([...new Set(paths)].filter((p) => !ok.has(p)), []);
    assert.ok(!ok.has('/no-such-probe'), 'an unknown path is not taken for a probe');
  });

  // Each broken copy must be reported, so none of the checks above passes by accident.
  const find = (all: Manifest[], name: string) => deployments(all).find((d) => served(d) === name) as Manifest;
  const container = (all: Manifest[], name: string) => find(all, name).spec.template.spec.containers[0];
  const breakages: Array<[string, (all: Manifest[], secret: Manifest) => Manifest[] | undefined, RegExp]> = [
    ['a replica count that is not a number', (all) => { find(all, 'files').spec.replicas = 'two'; }, /bantu-files: apps\/v1\/Deployment does not match its schema/],
    ['a service without a Deployment', (all) => all.filter((m) => m !== find(all, 'exports')), /exports: 0 Deployment/],
    ['a liveness probe on another path', (all) => { container(all, 'identity').livenessProbe.httpGet.path = '/health'; }, /identity: livenessProbe is not on \/healthz/],
    ['a gateway probe in plain HTTP', (all) => { container(all, 'gateway').readinessProbe.httpGet.scheme = 'HTTP'; }, /gateway: readinessProbe asks HTTP/],
    ['a container as root', (all) => { container(all, 'backup').securityContext.runAsUser = 0; }, /backup\/bantu: may run as root/],
    ['runAsNonRoot dropped', (all) => void delete find(all, 'files').spec.template.spec.securityContext.runAsNonRoot, /files\/bantu: may run as root/],
    ['a writable root filesystem', (all) => { container(all, 'notifications').securityContext.readOnlyRootFilesystem = false; }, /notifications\/bantu: root filesystem is writable/],
    ['no mount for /tmp', (all) => { container(all, 'identity').volumeMounts = container(all, 'identity').volumeMounts.filter((m: { mountPath: string }) => m.mountPath !== '/tmp'); }, /identity: \/tmp is not a writable mount/],
    ['backup without the blob volume', (all) => { container(all, 'backup').volumeMounts = container(all, 'backup').volumeMounts.filter((m: { name: string }) => m.name !== 'blobs'); }, /backup: \/var\/lib\/bantu\/blobs is not/],
    ['an unknown variable', (all) => void container(all, 'files').env.push({ name: 'BANTU_BLOBS', value: 'x' }), /BANTU_BLOBS is not a variable/],
    ['a secret missing from the template', (_all, secret) => void delete secret.stringData?.NATS_URL, /the Secret template has no NATS_URL/],
    ['no limits', (all) => void delete container(all, 'exports').resources.limits, /exports: no cpu and memory requests or no memory limit/],
    ['no budget for files', (all) => all.filter((m) => !(m.kind === 'PodDisruptionBudget' && m.metadata.name === 'bantu-files')), /files: no PodDisruptionBudget/],
    ['no network policy for services', (all) => all.filter((m) => m.metadata.name !== 'bantu-services-ingress'), /identity: no NetworkPolicy/],
    [
      'services open to every pod',
      (all) => {
        (all.find((m) => m.metadata.name === 'bantu-services-ingress') as Manifest).spec.ingress[0].from.push({ namespaceSelector: {} });
      },
      /admits pods other than/,
    ],
  ];
  for (const [what, breakIt, expected] of breakages) {
    it(`reports ${what}`, () => {
      const all = structuredClone(base);
      const secret = secretTemplate();
      const changed = breakIt(all, secret) ?? all;
      assert.match(allProblems(changed, secret).join('\n'), expected);
    });
  }
});
