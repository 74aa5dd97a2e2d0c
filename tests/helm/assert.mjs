// assert.mjs RENDERED [--expect-scaler keda|hpa|none] [--existing-secret NAME]
//            [--secret-envs A,B,...] [--bundled-postgres]
// Structural checks of one rendered helm/tierone release. Prints "N passed, N failed".
import { loadDocs, name, Counter } from "./lib.mjs";

const args = process.argv.slice(2);
const file = args[0];
const opt = (k, d = "") => { const i = args.indexOf(k); return i > 0 ? args[i + 1] : d; };
const expectScaler = opt("--expect-scaler", "none");
const existingSecret = opt("--existing-secret");
const secretEnvs = new Set(opt("--secret-envs").split(",").filter(Boolean));
const c = new Counter(`assert ${file}`);
const docs = await loadDocs(file);
const of = (kind) => docs.filter((d) => d.kind === kind);
const comp = (d) => d.metadata?.labels?.["app.kubernetes.io/component"];
const workloads = docs.filter((d) => ["Deployment", "StatefulSet", "Job"].includes(d.kind));
const deploy = (component) => of("Deployment").find((d) => comp(d) === component);

const durMs = (s) => {
  const m = /^(\d+)(ms|s|m|h)?$/.exec(String(s));
  if (!m) return NaN;
  return Number(m[1]) * { undefined: 1, ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2]];
};
const subset = (sel, labels) => Object.entries(sel || {}).every(([k, v]) => labels?.[k] === v);

// Labels on everything.
for (const d of docs) {
  const l = d.metadata?.labels || {};
  c.check(["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component", "app.kubernetes.io/version", "helm.sh/chart"].every((k) => l[k]),
  `${name(d)} has the app.kubernetes.io/* labels`);
}

// Autoscaling: an HPA or a ScaledObject, never both; no replicas when autoscaling.
const worker = deploy("worker");
const ingest = deploy("ingest");
c.check(worker && ingest, "worker and ingest Deployments rendered");
const hpas = of("HorizontalPodAutoscaler"), sos = of("ScaledObject");
c.check(!(hpas.length && sos.length), `never both an HPA (${hpas.length}) and a ScaledObject (${sos.length})`);
const got = sos.length ? "keda" : hpas.length ? "hpa" : "none";
c.check(got === expectScaler, `autoscaler is ${expectScaler} (got ${got})`);
if (got !== "none") c.check(worker && !("replicas" in worker.spec), "worker Deployment has no replicas: under autoscaling");
else c.check(worker && Number.isInteger(worker.spec.replicas), "worker Deployment has replicas: without autoscaling");
for (const h of [...hpas, ...sos]) {
  const t = h.spec.scaleTargetRef;
  c.check(t.name === worker?.metadata.name && (!t.kind || t.kind === "Deployment"), `${name(h)} targets the worker Deployment`);
}
for (const so of sos) {
  const lists = so.spec.triggers.map((t) => t.metadata.listName).sort();
  c.check(JSON.stringify(lists) === JSON.stringify(["queue:actions", "queue:ai", "queue:events", "queue:linear", "queue:sync"]),
    `${name(so)} watches queue:{actions,ai,events,linear,sync} (got ${lists})`);
  c.check(so.spec.triggers.every((t) => t.type === "redis" && typeof t.metadata.listLength === "string" && t.metadata.address),
    `${name(so)} triggers are redis list triggers with an address and a string listLength`);
  c.check(so.metadata.name.length <= 54, `${name(so)} name fits KEDA's 54 characters`);
  for (const t of so.spec.triggers.filter((t) => t.authenticationRef))
    c.check(of("TriggerAuthentication").some((a) => a.metadata.name === t.authenticationRef.name), `${name(so)} authenticationRef exists`);
}

// Every container: probes (not Jobs), resources, non-root, no capabilities, read-only root, /tmp emptyDir.
for (const w of workloads) {
  const pod = w.spec.template.spec;
  const vols = Object.fromEntries((pod.volumes || []).map((v) => [v.name, v]));
  for (const ct of [...(pod.initContainers || []), ...pod.containers]) {
    const id = `${name(w)} container ${ct.name}`;
    if (w.kind !== "Job") c.check(ct.livenessProbe && ct.readinessProbe, `${id} has liveness and readiness probes`);
    c.check(ct.resources?.requests && ct.resources?.limits?.memory, `${id} has resource requests and a memory limit`);
    const sc = ct.securityContext || {};
    c.check(sc.runAsNonRoot === true || (pod.securityContext?.runAsNonRoot === true && sc.runAsNonRoot !== false), `${id} runs as non-root`);
    c.check((sc.capabilities?.drop || []).includes("ALL") && !(sc.capabilities?.add || []).length, `${id} drops all capabilities`);
    c.check(sc.readOnlyRootFilesystem === true && sc.allowPrivilegeEscalation === false, `${id} has a read-only root and no privilege escalation`);
    const tmp = (ct.volumeMounts || []).find((m) => m.mountPath === "/tmp");
    c.check(tmp && vols[tmp.name]?.emptyDir, `${id} has an emptyDir at /tmp`);
  }
}

// Selectors match pod labels.
for (const w of workloads.filter((w) => w.kind !== "Job")) {
  c.check(subset(w.spec.selector.matchLabels, w.spec.template.metadata.labels) && Object.keys(w.spec.selector.matchLabels).length >= 3,
    `${name(w)} selector matches its pod labels`);
  c.check(!("app.kubernetes.io/version" in w.spec.selector.matchLabels), `${name(w)} selector has no version`);
}
const podLabels = workloads.map((w) => w.spec.template.metadata.labels);
for (const s of of("Service")) c.check(podLabels.some((l) => subset(s.spec.selector, l)), `${name(s)} selects pods`);
for (const p of of("PodDisruptionBudget")) {
  const n = workloads.filter((w) => subset(p.spec.selector.matchLabels, w.spec.template.metadata.labels)).length;
  c.check(n === 1, `${name(p)} selects the pods of exactly one workload (${n})`);
}
for (const i of of("Ingress"))
  for (const r of i.spec.rules) for (const p of r.http.paths)
    c.check(of("Service").some((s) => s.metadata.name === p.backend.service.name), `${name(i)} routes to a rendered Service`);

// Grace period above the shutdown timeout; checksum annotations roll pods on config change.
const cmEnv = (d) => {
  const cm = of("ConfigMap").find((m) => m.metadata.name === d?.spec.template.spec.containers[0].envFrom?.[0]?.configMapRef?.name);
  return cm?.data || {};
};
for (const [d, def] of [[worker, "25s"], [ingest, "20s"]]) {
  if (!d) continue;
  const timeout = durMs(cmEnv(d).TIERONE_SHUTDOWN_TIMEOUT ?? def);
  const grace = d.spec.template.spec.terminationGracePeriodSeconds;
  c.check(grace * 1000 > timeout, `${name(d)} terminationGracePeriodSeconds ${grace} > shutdown timeout ${timeout} ms`);
  const a = d.spec.template.metadata.annotations || {};
  c.check(/^[0-9a-f]{64}$/.test(a["checksum/config"] || "") && /^[0-9a-f]{64}$/.test(a["checksum/secret"] || ""),
    `${name(d)} pods carry checksum/config and checksum/secret`);
}

// The spool volume is at the spool path's directory; a PVC means 1 replica and Recreate.
if (ingest) {
  const path = cmEnv(ingest).TIERONE_SPOOL_PATH || "";
  const mount = ingest.spec.template.spec.containers[0].volumeMounts.find((m) => m.name === "spool");
  c.check(path.startsWith("/") && mount && path.startsWith(mount.mountPath + "/"), `spool ${path} is on the spool volume`);
  const vol = ingest.spec.template.spec.volumes.find((v) => v.name === "spool");
  if (vol?.persistentVolumeClaim) {
    c.check(ingest.spec.replicas === 1 && ingest.spec.strategy.type === "Recreate", "a spool PVC means 1 ingest replica and Recreate");
    c.check(of("PersistentVolumeClaim").some((p) => p.metadata.name === vol.persistentVolumeClaim.claimName), "the spool PVC is rendered");
  } else c.check(vol?.emptyDir, "the spool is an emptyDir (survives container restarts)");
}

// Migration Job: a hook before the workers (post-install only with a bundled PostgreSQL).
const bundledPg = of("StatefulSet").some((s) => comp(s) === "postgresql");
for (const j of of("Job")) {
  const a = j.metadata.annotations || {};
  const want = bundledPg ? "post-install,pre-upgrade" : "pre-install,pre-upgrade";
  c.check(a["helm.sh/hook"] === want, `${name(j)} is a ${want} hook (got ${a["helm.sh/hook"]})`);
  c.check((a["helm.sh/hook-delete-policy"] || "").includes("before-hook-creation"), `${name(j)} has a hook-delete-policy`);
  c.check(JSON.stringify(j.spec.template.spec.containers[0].args) === '["tierone","migrate"]', `${name(j)} runs tierone migrate`);
  for (const e of j.spec.template.spec.containers[0].env || []) {
    const ref = e.valueFrom?.secretKeyRef;
    if (!ref) continue;
    const hookSecret = of("Secret").find((s) => s.metadata.name === ref.name);
    c.check(!hookSecret || (hookSecret.metadata.annotations || {})["helm.sh/hook"] || comp(hookSecret) !== "tierone",
      `${name(j)} env ${e.name} does not need the release's Secret (absent before install)`);
  }
}

// Secrets: never a literal value; with existingSecret, every secret variable comes from it.
const envs = workloads.flatMap((w) => w.spec.template.spec.containers.flatMap((ct) => (ct.env || []).map((e) => ({ w, e }))));
for (const { w, e } of envs.filter(({ e }) => secretEnvs.has(e.name))) {
  if (e.value !== undefined)
    c.check(!/:\/\/[^/]*:[^$@/]+@/.test(e.value), `${name(w)} ${e.name} holds no password in its value`);
  if (existingSecret && e.value === undefined)
    c.check(e.valueFrom?.secretKeyRef?.name === existingSecret, `${name(w)} ${e.name} comes from Secret ${existingSecret}`);
  if (existingSecret) c.check(e.value === undefined, `${name(w)} ${e.name} is not composed in the chart (existingSecret)`);
}
for (const m of of("ConfigMap")) for (const k of Object.keys(m.data || {}))
  c.check(!secretEnvs.has(k), `${name(m)} holds no secret setting (${k})`);
if (existingSecret) {
  const leaked = of("Secret").filter((s) => Object.keys({ ...s.data, ...s.stringData }).some((k) => secretEnvs.has(k)));
  c.check(leaked.length === 0, `no Secret with secret settings is rendered beside ${existingSecret} (${leaked.map(name)})`);
} else {
  for (const { w, e } of envs) {
    const ref = e.valueFrom?.secretKeyRef;
    if (!ref || w.kind === "Job") continue;
    const s = of("Secret").find((x) => x.metadata.name === ref.name);
    if (s) c.check(ref.key in (s.data || {}), `${name(w)} ${e.name}: key ${ref.key} is in Secret ${ref.name}`);
  }
}
c.finish();
