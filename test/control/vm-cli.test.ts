// `tcp-replicator vm`: JSON out, bad arguments exit 2 before any hypervisor is contacted,
// hypervisor errors exit 1. The test driver lives in the CLI's own process (test:///default is
// per process), so each command here is self-contained; the VM lab test drives it against a real
// libvirtd.
import t from "tap";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { run } from "../../src/sys/command.js";
import { cli } from "../helpers.js";
import { tempDir } from "./helpers.js";

const KVM = fileURLToPath(new URL("../../../vm-images/templates/kvm.xml", import.meta.url));

t.test("vm list, provision and destroy on the test driver", async (t) => {
  const list = await cli(["vm", "list", "--uri", "test:///default"]);
  t.equal(list.code, 0, list.stderr);
  t.match(JSON.parse(list.stdout), [{ name: "test", state: "running", machine: undefined }]);
  const none = await cli(["vm", "list", "--uri", "test:///default", "--service", "web"]);
  t.same(JSON.parse(none.stdout), [], "--service keeps only that service's machines");

  const dir = await tempDir(t, "vmcli");
  await writeFile(join(dir, "vmlinuz"), "k");
  await writeFile(join(dir, "initrd.img"), "i");
  await run(["qemu-img", "create", "-q", "-f", "qcow2", join(dir, "root.qcow2"), "16M"]);
  const config = join(dir, "machines.json");
  await writeFile(
    config,
    JSON.stringify({
      port: 7000,
      service: "web",
      hosts: [{ uri: "test:///default", bridge: "br0" }],
      template: KVM,
      domainType: "test",
      image: ".",
      diskDir: "disks",
      addresses: ["10.70.0.10-10.70.0.11"],
      readiness: "running",
    }),
  );
  const made = await cli(["vm", "provision", "--config", config, "--uri", "test:///default"]);
  t.equal(made.code, 0, made.stderr);
  t.match(JSON.parse(made.stdout), {
    name: "web-1",
    host: "test:///default",
    address: "10.70.0.10",
    state: "running",
  });

  const notOurs = await cli(["vm", "destroy", "--uri", "test:///default", "test"]);
  t.equal(notOurs.code, 1);
  t.match(notOurs.stderr, /not a tcp-replicator machine .*not touched/);
  const missing = await cli(["vm", "destroy", "--uri", "test:///default", "ghost"]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /no domain ghost/);
});

t.test("bad arguments and configs exit 2 and touch nothing", async (t) => {
  const dir = await tempDir(t, "vmbad");
  const badConfig = join(dir, "bad.json");
  await writeFile(
    badConfig,
    JSON.stringify({ port: 7000, service: "web", hosts: [{ uri: "vbox:///x", bridge: "b" }] }),
  );
  const cases: Array<[string[], RegExp]> = [
    [["vm"], /vm: list, provision or destroy/],
    [["vm", "explode"], /unknown command explode/],
    [["vm", "list"], /--uri URI is required/],
    [["vm", "list", "--uri", "vbox:///session"], /unknown hypervisor URI/],
    [["vm", "provision"], /--config FILE is required/],
    [["vm", "provision", "--config", join(dir, "nope.json")], /cannot read config/],
    [["vm", "provision", "--config", badConfig], /hosts\[0\]\.uri: unknown hypervisor URI/],
    [["vm", "provision", "--config", badConfig, "--from", "bad name"], /--from/],
    [["vm", "destroy", "--uri", "test:///default"], /NAME of a machine is required/],
    [["vm", "destroy", "--uri", "qemu://nowhere", "web-1"], /unknown hypervisor URI/],
    [["vm", "destroy", "--uri", "test:///default", "a", "b"], /unexpected argument/],
    [["vm", "list", "--uri", "test:///default", "--colour", "x"], /Unknown option/],
  ];
  for (const [args, re] of cases) {
    const r = await cli(args);
    t.equal(r.code, 2, `${args.join(" ")}: exit 2`);
    t.match(r.stderr, re, args.join(" "));
    t.equal(r.stdout, "", "nothing printed on stdout");
  }
});
