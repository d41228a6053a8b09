// Case study 2 across a failover: a client downloads the lab's largest file (64 MiB) through the
// VIP at a limited rate, the original fails while the download is in progress, the connection is
// spliced onto a replica and the client receives every byte, intact (SHA-256 computed from the
// deterministic www generator, not from any server).
import t from "tap";
import { fileURLToPath } from "node:url";
import { inNs, proxyLogEvents, sleep, withLab } from "../helpers.js";
import { labKill } from "../../src/lab/lab.js";
import { queryStats } from "../../src/proxy/stats-client.js";
import { WWW_FILES, expectedSha256 } from "../../src/lab/www.js";

const DOWNLOAD = fileURLToPath(new URL("../fixtures/slow-download.js", import.meta.url));
/** 8 MiB/s: the 64 MiB download takes ~8 s, the fault comes ~2 s in. */
const RATE = 8 * 2 ** 20;

interface Download {
  status: number;
  contentLength: number;
  bytes: number;
  sha256: string;
  error: string | null;
  startedAt: number;
  firstByteAt: number;
  endedAt: number;
  maxGapMs: number;
  progress: Array<[number, number]>;
}

const file = WWW_FILES.reduce((a, b) => (b.size > a.size ? b : a));
const want = expectedSha256(file.name);

for (const mode of ["process", "freeze", "link", "host"] as const) {
  t.test(
    `a ${file.size / 2 ** 20} MiB download in progress when the original dies (${mode}) completes with the right SHA-256`,
    async (t) => {
      t.equal(file.size, 64 * 2 ** 20, `the largest lab file, ${file.name}, is 64 MiB`);
      const state = await withLab(t, `fh${mode.slice(0, 3)}`, 2, "http", true);
      const topo = state.topology;
      const download = inNs(
        topo.client.namespace,
        [process.execPath, DOWNLOAD, topo.appliance.vip, String(topo.port), `/${file.name}`, String(RATE)],
        60_000,
      );
      await sleep(2000);
      const fault = await labKill(topo.name, "original", mode);
      const r = await download;
      const stats = await queryStats(state.proxy!.statsSocket);
      const failures = stats.engine.failures;
      t.comment(`failures: ${JSON.stringify(failures)}`);
      t.equal(r.code, 0, `the download exited 0 ${r.code === 0 ? "" : r.stderr.trim() + r.stdout.trim()}`);
      const d = JSON.parse(r.stdout) as Download;
      t.comment(`download: ${JSON.stringify({ ...d, progress: undefined })}`);
      t.equal(d.error, null, "no error on the client's connection");
      t.equal(d.status, 200, "HTTP 200");
      t.equal(d.contentLength, file.size, "Content-Length is the file's size");
      t.equal(d.bytes, file.size, `${d.bytes} bytes received`);
      t.equal(d.sha256, want, "SHA-256 of what the client received equals the generator's");
      const before = d.progress.filter(([at]) => at <= fault.injectedAt).at(-1)?.[1] ?? 0;
      t.ok(
        d.firstByteAt > 0 && d.firstByteAt < fault.injectedAt && d.endedAt > fault.injectedAt,
        `the download was in progress when the fault was injected (${before} bytes by then, ` +
          `finished ${Math.round(d.endedAt - fault.injectedAt)} ms later, longest pause ${d.maxGapMs} ms)`,
      );
      t.ok(before < file.size, "not complete when the fault was injected");
      t.equal(failures.promotions, 1, "one promotion");
      t.not(failures.original, topo.original.address, `the new original is ${failures.original}`);
      t.ok(
        topo.replicas.some((x) => x.address === failures.original),
        "the new original is one of the replicas",
      );
      const promoted = await proxyLogEvents<{ replica: string; spliced: number; reset: number }>(
        state.proxy!.log,
        "promoted",
      );
      t.same(
        promoted.map((p) => ({ spliced: p.spliced, reset: p.reset })),
        [{ spliced: 1, reset: 0 }],
        "the download's connection was spliced onto the new original, not reset",
      );
    },
  );
}
