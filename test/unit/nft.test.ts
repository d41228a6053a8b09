import t from "tap";
import { isIPv4, parseCounters, renderKernelPath } from "../../src/proxy/nft.js";

t.test("kernel path ruleset", async (t) => {
  const script = renderKernelPath({
    vip: "10.0.0.100",
    port: 7000,
    original: "10.0.1.10",
    snatAddress: "10.0.1.1",
  });
  t.match(
    script,
    /^table ip tcp_replicator \{\}\ndelete table ip tcp_replicator\n/,
    "replaces the table atomically",
  );
  t.match(script, /ip daddr 10\.0\.0\.100 tcp dport 7000 counter dnat to 10\.0\.1\.10:7000/);
  t.match(script, /ip daddr 10\.0\.1\.10 tcp dport 7000 ct status dnat counter snat to 10\.0\.1\.1/);
  t.match(
    renderKernelPath({ vip: "1.2.3.4", port: 1, original: "1.2.3.5", snatAddress: "1.2.3.6", table: "x_1" }),
    /table ip x_1 \{/,
  );
});

t.test("kernel path rejects bad config", async (t) => {
  const good = { vip: "10.0.0.100", port: 7000, original: "10.0.1.10", snatAddress: "10.0.1.1" };
  t.throws(() => renderKernelPath({ ...good, vip: "10.0.0.256" }), /vip/);
  t.throws(() => renderKernelPath({ ...good, original: "host; flush ruleset" }), /original/);
  t.throws(() => renderKernelPath({ ...good, port: 0 }), /port/);
  t.throws(() => renderKernelPath({ ...good, port: 65536 }), /port/);
  t.throws(() => renderKernelPath({ ...good, table: "bad name" }), /table/);
});

t.test("isIPv4", async (t) => {
  for (const ok of ["0.0.0.0", "255.255.255.255", "10.100.1.10"]) t.ok(isIPv4(ok), ok);
  for (const bad of ["256.1.1.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "a.b.c.d", ""]) t.notOk(isIPv4(bad), bad);
});

t.test("counters from nft -j", async (t) => {
  const json = JSON.stringify({
    nftables: [
      { metainfo: {} },
      {
        rule: {
          comment: "client-to-original",
          expr: [{ match: {} }, { counter: { packets: 5, bytes: 300 } }],
        },
      },
      { rule: { expr: [{ counter: { packets: 1, bytes: 1 } }] } },
    ],
  });
  t.same(parseCounters(json), [{ comment: "client-to-original", packets: 5, bytes: 300 }]);
});
