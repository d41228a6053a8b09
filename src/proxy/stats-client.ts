// Reads the proxy's statistics from its Unix socket (one JSON document per connection).
import { connect } from "node:net";
import type { ProxyStats } from "./proxy.js";

export function queryStats(path: string, timeoutMs = 5000): Promise<ProxyStats> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let data = "";
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no answer from ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding("utf8");
    sock.on("data", (d: string) => (data += d));
    sock.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on("end", () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(data) as ProxyStats);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
}
