// The http service: a real Apache httpd on every backend serving the deterministic tree; every file
// through the VIP has the expected SHA-256, and every backend gives the same ETag for every file.
import t from "tap";
import { inNs, withLab } from "../helpers.js";
import { backends } from "../../src/lab/topology.js";
import { WWW_FILES, expectedSha256 } from "../../src/lab/www.js";

t.test("http through the VIP and on every backend", async (t) => {
  const { topology: topo } = await withLab(t, "http", 2, "http");
  const url = (host: string, file: string) => `http://${host}:8080/${file}`;

  for (const f of WWW_FILES) {
    const r = await inNs(
      topo.client.namespace,
      ["sh", "-c", `curl -sf ${url(topo.appliance.vip, f.name)} | sha256sum`],
      60_000,
    );
    t.equal(r.code, 0, `GET ${f.name} through the VIP`);
    t.equal(r.stdout.split(" ")[0], expectedSha256(f.name), `${f.name} has the expected bytes`);
  }

  const etagOf = async (host: string, file: string) => {
    const r = await inNs(topo.client.namespace, ["curl", "-sfI", url(host, file)]);
    return /^ETag: (.*)\r?$/im.exec(r.stdout)?.[1];
  };
  for (const f of WWW_FILES) {
    const tags = await Promise.all(backends(topo).map((b) => etagOf(b.address, f.name)));
    t.ok(tags[0], `${f.name} has an ETag`);
    t.same(new Set(tags).size, 1, `${f.name}: same ETag on every backend (${tags[0]})`);
  }
  const index = await inNs(topo.client.namespace, ["curl", "-sf", url(topo.appliance.vip, "")]);
  t.match(index.stdout, /64M\.bin/, "index lists the files");
  const missing = await inNs(topo.client.namespace, [
    "curl",
    "-s",
    "-o",
    "/dev/null",
    "-w",
    "%{http_code}",
    url(topo.appliance.vip, "nope"),
  ]);
  t.equal(missing.stdout, "404");
});
