// lab down cleans what a crashed run left; a lab up that fails half-way leaves nothing.
import t from "tap";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cli, exists, labNamespaces, slotOwners, uniqueLabName } from "../helpers.js";
import { labDir, labDown, labUp, readState } from "../../src/lab/lab.js";
import { isAlive } from "../../src/sys/process.js";

t.test("down after a crash that lost the state directory", async (t) => {
  const name = uniqueLabName("crash");
  t.teardown(() => labDown(name));
  const state = await labUp({ name, replicas: 1, service: "echo" });
  const pids = Object.values(state.services).map((s) => s.pid);
  // Simulate a crash that lost our records: only the kernel objects and processes remain.
  await rm(labDir(name), { recursive: true, force: true });
  const upAgain = await cli(["lab", "up", "--name", name]);
  t.equal(upAgain.code, 2, "up refuses while leftovers exist");
  t.match(upAgain.stderr, /has namespaces already.*lab down/);
  const down = await cli(["lab", "down", "--name", name]);
  t.equal(down.code, 0, down.stderr);
  t.equal((JSON.parse(down.stdout) as { namespacesRemoved: string[] }).namespacesRemoved.length, 5);
  t.same(await labNamespaces(name), []);
  t.ok(
    pids.every((p) => !isAlive(p)),
    "leftover processes killed",
  );
  t.notOk((await slotOwners()).includes(name), "slot released");
});

t.test("a lab up that fails half-way rolls back", async (t) => {
  const name = uniqueLabName("fail");
  t.teardown(() => labDown(name));
  // A redis-server that dies at once makes the service start fail after the network was built.
  const bin = await mkdtemp(join(tmpdir(), "tr-fakebin-"));
  t.teardown(() => rm(bin, { recursive: true, force: true }));
  await writeFile(join(bin, "redis-server"), "#!/bin/sh\necho 'fake redis refuses to start' >&2\nexit 1\n");
  await chmod(join(bin, "redis-server"), 0o755);
  const r = await cli(["lab", "up", "--name", name, "--service", "redis", "--replicas", "1"], {
    ...process.env,
    PATH: `${bin}:${process.env.PATH}`,
  });
  t.equal(r.code, 1);
  t.match(r.stderr, /exited before listening.*fake redis refuses to start/s, "the service's own words");
  t.same(await labNamespaces(name), [], "no namespaces left");
  t.notOk(await exists(labDir(name)), "no state left");
  t.equal(await readState(name), undefined);
  t.notOk((await slotOwners()).includes(name), "slot released");
});

t.test("the same name twice", async (t) => {
  const name = uniqueLabName("dup");
  t.teardown(() => labDown(name));
  await labUp({ name, replicas: 0, service: "echo" });
  const r = await cli(["lab", "up", "--name", name, "--replicas", "0"]);
  t.equal(r.code, 2);
  t.match(r.stderr, /lab down/);
  t.equal(
    (await labNamespaces(name)).length,
    4,
    "the first lab is intact (client, appliance, lan, original)",
  );
});
