// `tcp-replicator serve`: the appliance as a service. Starts, in order, the state store (an
// embedded redis-server unless a Redis URL is configured), the data plane with the state found
// there (the configuration only seeds the first start), the control plane and its API; stops in
// the reverse order. A failure part-way stops what was started.
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { ConfigError, parseProxyConfig, type ProxyConfig } from "../proxy/config.js";
import { buildApi, type ApiServer } from "./api.js";
import type { ServeConfig } from "./config.js";
import { ControlPlane } from "./control-plane.js";
import type { DataPlane } from "./data-plane.js";
import { EmbeddedRedis } from "./embedded-redis.js";
import { EventHub } from "./events.js";
import { Metrics } from "./metrics.js";
import { StateStore, describe } from "./state.js";
import { Provisioner } from "./provisioner.js";
import { RedundancyKeeper } from "./redundancy.js";

/** Starts the data plane for a configuration; returns it and how to stop it. */
export type DataPlaneFactory = (
  config: ProxyConfig,
) => Promise<{ dataPlane: DataPlane; stop: () => Promise<void> }>;

export interface Appliance {
  /** The API's base URL. */
  url: string;
  token: string;
  /** Where a generated token was written (undefined when the configuration gave one). */
  tokenFile: string | undefined;
  control: ControlPlane;
  store: StateStore;
  embeddedRedis: EmbeddedRedis | undefined;
  app: ApiServer;
  /** Machine provisioning and the replica count it keeps (when configured). */
  machines: RedundancyKeeper | undefined;
  stop(): Promise<void>;
}

export async function startAppliance(
  cfg: ServeConfig,
  log: Logger,
  startDataPlane: DataPlaneFactory,
): Promise<Appliance> {
  const cleanups: Array<() => Promise<void>> = [];
  const stopAll = async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch (e) {
        log.error({ err: String(e) }, "stop step failed");
      }
    }
    cleanups.length = 0;
  };
  try {
    const api = cfg.api;
    let embedded: EmbeddedRedis | undefined;
    let target = api.redisUrl;
    if (target === undefined) {
      embedded = await EmbeddedRedis.start({
        runtimeDir: api.runtimeDir,
        dataDir: api.dataDir,
        log: log.child({ component: "redis" }),
      });
      const e = embedded;
      cleanups.push(() => e.stop());
      target = embedded.socketPath;
    }
    const service = { vip: cfg.proxy.vip, port: cfg.proxy.port };
    const store = await StateStore.connect({
      target,
      prefix: api.redisPrefix,
      service,
      historyLimit: api.historyLimit,
      log: log.child({ component: "state" }),
    });
    cleanups.push(() => store.close());
    let state = await store.load();
    if (state === undefined) {
      const now = new Date().toISOString();
      await store.seed(
        { address: cfg.proxy.original, id: null, since: now },
        cfg.proxy.replicas.map((r) => ({ ...r, addedAt: now })),
      );
      state = await store.load();
      if (state === undefined) throw new Error("the state store lost the state it was just given");
      log.info(
        { redis: describe(target), original: state.original, replicas: state.replicas },
        "state seeded",
      );
    } else {
      log.info(
        {
          redis: describe(target),
          generation: state.generation,
          original: state.original,
          replicas: state.replicas,
        },
        "state restored: the stored roles and replica set override the configuration's",
      );
    }
    let proxyConfig: ProxyConfig;
    try {
      proxyConfig = parseProxyConfig({
        ...cfg.proxy,
        original: state.original.address,
        replicas: state.replicas.map((r) => ({ id: r.id, address: r.address })),
      });
    } catch (e) {
      if (e instanceof ConfigError)
        throw new Error(`the state stored in Redis does not fit the configuration: ${e.message}`);
      throw e;
    }
    const started = await startDataPlane(proxyConfig);
    cleanups.push(started.stop);
    const dataPlane = started.dataPlane;

    const hub = new EventHub();
    const metrics = new Metrics({ ...(dataPlane.rtt ? { rtt: dataPlane.rtt } : {}), processMetrics: true });
    const control = new ControlPlane({
      dataPlane,
      store,
      hub,
      metrics,
      log: log.child({ component: "control" }),
      state,
      historyLimit: api.historyLimit,
    });
    cleanups.push(() => Promise.resolve(control.close()));

    let machines: RedundancyKeeper | undefined;
    if (cfg.machines) {
      // Readiness of a new machine is asked from the data plane's side: it reaches the backends.
      const provisioner = await Provisioner.open(
        cfg.machines,
        log.child({ component: "machines" }),
        async (address, timeoutMs) => (await dataPlane.probe(address, timeoutMs)).alive === true,
      );
      cleanups.push(() => provisioner.close());
      const keeper = new RedundancyKeeper({
        provisioner,
        control,
        dataPlane,
        hub,
        log: log.child({ component: "redundancy" }),
      });
      machines = keeper;
      cleanups.push(() => keeper.stop());
    }

    let token = api.token;
    let tokenFile: string | undefined;
    if (token === undefined) {
      // Loopback only (the configuration refuses anything else without a token): a fresh token
      // readable by root alone.
      token = randomBytes(24).toString("base64url");
      await mkdir(api.runtimeDir, { recursive: true, mode: 0o700 });
      tokenFile = join(api.runtimeDir, "api-token");
      await writeFile(tokenFile, token + "\n", { mode: 0o600 });
    }
    const app = await buildApi({
      control,
      dataPlane,
      hub,
      metrics,
      store,
      token,
      log: log.child({ component: "api" }),
      defaults: { drainTimeoutMs: api.drainTimeoutMs, switchoverWaitMs: api.switchoverWaitMs },
      machines,
    });
    cleanups.push(async () => {
      // Open event streams end first: closing the server does not wait for them.
      hub.close();
      await app.close();
    });
    await app.listen({ host: api.listen, port: api.port });
    const host = api.listen.includes(":") ? `[${api.listen}]` : api.listen;
    const bound = app.server.address();
    const url = `http://${host}:${typeof bound === "object" && bound ? bound.port : api.port}`;
    log.info({ url, tokenFile }, "control API listening");
    // Provisioning starts once everything that reports on it is up.
    machines?.start();
    return { url, token, tokenFile, control, store, embeddedRedis: embedded, app, machines, stop: stopAll };
  } catch (e) {
    await stopAll();
    throw e;
  }
}
