// Reads the proxy's statistics from its Unix socket (one JSON document per connection).
import { connect } from "node:net";
import type { ProxyStats } from "./proxy.js";

export function queryStats(path: string, timeoutMs = 5000): Promise<ProxyStats> {
  return request<ProxyStats>(path, { cmd: "stats" }, timeoutMs);
}

/** Sends one request to the proxy's control socket; rejects with the proxy's error message. */
export function request<T>(path: string, body: Record<string, unknown>, timeoutMs = 5000): Promise<T> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    sock.end(JSON.stringify(body));
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
        const answer = JSON.parse(data) as T & { error?: string };
        if (answer && typeof answer === "object" && typeof answer.error === "string")
          reject(new Error(answer.error));
        else resolve(answer);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
}
