// The running proxy as the control plane's data plane.
import { probe, type ProbeAnswer } from "../proxy/probe.js";
import type { Proxy } from "../proxy/proxy.js";
import type { DataPlane, EngineEventListener, PromotionReport } from "./data-plane.js";
import { histogramExposition, type RttSource } from "./metrics.js";

export class ProxyDataPlane implements DataPlane {
  readonly service: { vip: string; port: number };
  readonly ownAddresses: readonly string[];
  readonly rtt: RttSource;

  constructor(private readonly proxy: Proxy) {
    const c = proxy.config;
    this.service = { vip: c.vip, port: c.port };
    this.ownAddresses = [c.vip, c.snatAddress, c.replicationAddress];
    this.rtt = () => histogramExposition(proxy.engine.rttSeries());
  }

  original(): string {
    return this.proxy.original;
  }

  fenced(): readonly string[] {
    return this.proxy.fencedAddresses;
  }

  engineStats() {
    return this.proxy.engine.stats();
  }

  stats() {
    return this.proxy.stats();
  }

  connections() {
    return this.proxy.engine.connections();
  }

  bestReplica(): string | undefined {
    return this.proxy.engine.bestReplica();
  }

  replicaIds(): string[] {
    return this.proxy.engine.replicaIds();
  }

  addReplica(id: string, address: string): void {
    this.proxy.addReplica(id, address);
  }

  holdOriginal(ms: number): () => void {
    return this.proxy.holdOriginal(ms);
  }

  drainReplica(id: string): void {
    this.proxy.drainReplica(id);
  }

  removeReplica(id: string): void {
    this.proxy.removeReplica(id);
  }

  promote(id: string): Promise<PromotionReport> {
    return this.proxy.promote(id);
  }

  probe(address: string, timeoutMs: number): Promise<ProbeAnswer> {
    const c = this.proxy.config;
    return new Promise((resolve) => {
      probe({ address, port: c.port, timeoutMs, healthCheck: c.healthCheck }, resolve);
    });
  }

  subscribe(listener: EngineEventListener): () => void {
    return this.proxy.subscribe(listener);
  }
}
