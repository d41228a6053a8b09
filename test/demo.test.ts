// The demo (README's first command, minus the install step) brings a lab up, shows traffic through
// the VIP and removes the lab when it ends, also when interrupted with Ctrl-C (SIGINT).
import t from "tap";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { labNamespaces, uniqueLabName } from "./helpers.js";
import { labDown } from "../src/lab/lab.js";

const DEMO = fileURLToPath(new URL("../src/lab/demo.js", import.meta.url));

function runDemo(args: string[], interruptAfterLine?: RegExp): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [DEMO, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let sent = false;
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      if (interruptAfterLine && !sent && interruptAfterLine.test(out)) {
        sent = true;
        child.kill("SIGINT");
      }
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

t.test("demo with a duration", async (t) => {
  const name = uniqueLabName("demo");
  t.teardown(() => labDown(name));
  const r = await runDemo(["--name", name, "--duration", "2.5"]);
  t.equal(r.code, 0, r.out);
  t.match(r.out, /lab .* up: client 10\.100\.\d+\.2 -> VIP 10\.100\.\d+\.100:7000 -> original/);
  t.match(r.out, /dashboard: http:\/\/10\.102\.\d+\.2:9480\/ \(switchover token [\w-]+\)/);
  t.match(r.out, /echo 200 round trips of 64 B, RTT p50 \d+ µs.*kernel path: \d+ pkts in, \d+ pkts out/);
  t.match(
    r.out,
    /replicated \d+ B: replica1 acked \d+ B, 0 diverged, 0 lagging; replica2 acked/,
    "replication shown",
  );
  t.match(r.out, /down: removed 6 namespaces/);
  t.same(await labNamespaces(name), []);
});

t.test("demo interrupted with Ctrl-C", async (t) => {
  const name = uniqueLabName("demoint");
  t.teardown(() => labDown(name));
  const r = await runDemo(
    ["--name", name, "--service", "redis", "--replicas", "1"],
    /INCR demo:counter -> 1/,
  );
  t.equal(r.code, 0, r.out);
  t.match(r.out, /down: removed 5 namespaces/);
  t.same(await labNamespaces(name), []);
});
