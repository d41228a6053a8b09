// `tcp-replicator lab up` runs the appliance as `serve`: its control API answers from the root
// namespace on the lab's management link, with the token printed in the lab's JSON; a switchover
// through it changes the roles the kernel path uses. `--no-api` gives the bare proxy and puts
// nothing in the root namespace. `lab down` removes the management link with the lab.
import t from "tap";
import { labDown } from "../../src/lab/lab.js";
import { cli, inNs, uniqueLabName } from "../helpers.js";
import { run } from "../../src/sys/command.js";

interface LabJson {
  api?: string;
  token?: string;
  namespaces: { client: string };
  addresses: { vip: string; original: string; replicas: string[] };
}
interface StatusJson {
  original: { address: string };
  replicas: Array<{ id: string }>;
}
const getStatus = async (api: string) => (await (await fetch(`${api}/v1/status`)).json()) as StatusJson;

async function rootLinks(): Promise<string[]> {
  const links = JSON.parse(await run(["ip", "-j", "link", "show"])) as Array<{ ifname: string }>;
  return links.map((l) => l.ifname);
}

t.test("lab up: the control API on the management link, with its token", async (t) => {
  const name = uniqueLabName("api");
  t.teardown(() => labDown(name));
  const up = await cli([
    "lab",
    "up",
    "--name",
    name,
    ..."--replicas 2 --service redis --manual-failover".split(" "),
  ]);
  t.equal(up.code, 0, `lab up: ${up.stderr}`);
  const lab = JSON.parse(up.stdout) as LabJson;
  t.match(lab.api, /^http:\/\/10\.102\.\d+\.2:9480$/, "the API's base URL");
  t.match(lab.token, /^[A-Za-z0-9_-]{24}$/, "a fresh token");
  const api = lab.api!;

  const status = await getStatus(api);
  t.equal(status.original.address, lab.addresses.original, "the status names the original");
  t.same(
    status.replicas.map((r) => r.id),
    ["replica1", "replica2"],
    "and both replicas",
  );
  const mgmtLink = (await rootLinks()).filter((l) => l.startsWith("trm"));
  t.equal(mgmtLink.length >= 1, true, "the management link's end is in the root namespace");

  // The VIP works with the API in front of the same data plane.
  const set = await inNs(lab.namespaces.client, ["redis-cli", "-h", lab.addresses.vip, "SET", "k", "v"]);
  t.equal(set.stdout.trim(), "OK", `SET through the VIP: ${set.stderr}`);

  const post = (token?: string) =>
    fetch(`${api}/v1/switchover`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify({ replica: "replica2" }),
    });
  t.equal((await post()).status, 401, "a switchover without the token is refused");
  t.equal((await post("wrong-token-wrong-token0")).status, 401, "and with a wrong one");
  const before = await getStatus(api);
  t.equal(before.original.address, lab.addresses.original, "nothing changed");

  const ok = await post(lab.token);
  t.equal(ok.status, 200, `switchover with the lab's token: ${await ok.text()}`);
  const after = await getStatus(api);
  t.equal(after.original.address, lab.addresses.replicas[1], "replica2 is the original now");
  // The kernel path follows: a new connection through the VIP reaches replica2's redis, which
  // holds the key written before (replicated) — and the old original is fenced.
  const get = await inNs(lab.namespaces.client, ["redis-cli", "-h", lab.addresses.vip, "GET", "k"]);
  t.equal(get.stdout.trim(), "v", `GET through the VIP after the switchover: ${get.stderr}`);

  const status2 = await cli(["lab", "status", "--name", name]);
  t.equal((JSON.parse(status2.stdout) as LabJson).token, lab.token, "lab status repeats the API and token");

  const down = await cli(["lab", "down", "--name", name]);
  t.equal(down.code, 0, down.stderr);
  const host = `trm${api.split(".")[2]}`;
  t.notOk((await rootLinks()).includes(host), `${host} went with the lab`);
});

t.test("lab up --no-api: the bare proxy, nothing in the root namespace", async (t) => {
  const name = uniqueLabName("noapi");
  t.teardown(() => labDown(name));
  const before = await rootLinks();
  const up = await cli(["lab", "up", "--name", name, "--replicas", "1", "--service", "echo", "--no-api"]);
  t.equal(up.code, 0, `lab up: ${up.stderr}`);
  const lab = JSON.parse(up.stdout) as LabJson;
  t.equal(lab.api, undefined, "no API in the JSON");
  t.equal(lab.token, undefined);
  t.same(
    (await rootLinks()).filter((l) => !before.includes(l)),
    [],
    "no new link in the root namespace",
  );
  const stats = await cli(["lab", "stats", "--name", name]);
  t.equal(stats.code, 0, `the proxy answers on its stats socket: ${stats.stderr}`);
});
