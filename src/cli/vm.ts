// `tcp-replicator vm list|provision|destroy`: the provisioner for operators, one JSON document on
// stdout per command. Bad arguments or configs exit 2 before any hypervisor is contacted;
// hypervisor and provisioning failures exit 1 and leave nothing half-made (provisioner.ts).
import { basename, dirname, resolve } from "node:path";
import { rm } from "node:fs/promises";
import { pino } from "pino";
import { HypervisorConnection, validateUri } from "../control/hypervisor.js";
import { parseMachinesConfig } from "../control/machines-config.js";
import { Provisioner } from "../control/provisioner.js";
import { ConfigError } from "../proxy/config.js";
import { isIPv4 } from "../proxy/nft.js";
import { UsageError, parse, print, readConfigFile } from "./args.js";

export const VM_USAGE = `  tcp-replicator vm list --uri URI [--service NAME]        # domains on a host (ours carry "machine")
  tcp-replicator vm provision --config FILE [--uri URI] [--from NAME] [--original IP]
                        # a machine of the config's "machines" section: a fresh one, or --from a
                        # running machine (its disk forked); --uri: on that configured host only
  tcp-replicator vm destroy --uri URI NAME                  # stop and undefine one of our machines, remove its disk
`;

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** A malformed URI is the operator's typo: a usage error, before anything connects. */
function uriArg(uri: string | undefined, cmd: string): string {
  if (uri === undefined) throw new UsageError(`vm ${cmd}: --uri URI is required`);
  try {
    return validateUri(uri);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** A file holding either a `machines` section alone (with its own "port") or a serve config. */
async function machinesFromFile(path: string) {
  const raw = await readConfigFile(path);
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new ConfigError(`${path}: expected a JSON object`);
  const o = raw as Record<string, unknown>;
  const base = dirname(resolve(path));
  if ("machines" in o) {
    const port = o.port;
    if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535)
      throw new ConfigError("port: expected the service port (1 to 65535) beside machines");
    return parseMachinesConfig(o.machines, port, base);
  }
  const { port, ...rest } = o;
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535)
    throw new ConfigError("port: expected the service port (1 to 65535)");
  return parseMachinesConfig(rest, port, base);
}

export async function vmCommand(sub: string | undefined, rest: string[]): Promise<number> {
  const log = pino({ level: process.env.TCP_REPLICATOR_LOG_LEVEL ?? "warn" }, pino.destination(2));
  switch (sub) {
    case "list": {
      const { values } = parse(rest, { uri: { type: "string" }, service: { type: "string" } });
      const h = await HypervisorConnection.open(uriArg(values.uri, "list"));
      try {
        const all = await h.list();
        print(values.service === undefined ? all : all.filter((d) => d.machine?.service === values.service));
      } finally {
        await h.close();
      }
      return 0;
    }
    case "provision": {
      const { values } = parse(rest, {
        config: { type: "string" },
        uri: { type: "string" },
        from: { type: "string" },
        original: { type: "string" },
      });
      if (values.config === undefined) throw new UsageError("vm provision: --config FILE is required");
      if (values.from !== undefined && !NAME_RE.test(values.from))
        throw new UsageError("--from: a machine name");
      if (values.original !== undefined && !isIPv4(values.original))
        throw new UsageError("--original: an IPv4 address");
      let cfg = await machinesFromFile(values.config);
      if (values.uri !== undefined) {
        const host = cfg.hosts.find((h) => h.uri === values.uri);
        if (!host)
          throw new UsageError(
            `--uri ${values.uri} is not one of the config's hosts (${cfg.hosts.map((h) => h.uri).join(", ")})`,
          );
        cfg = { ...cfg, hosts: [host] };
      }
      const p = await Provisioner.open(cfg, log);
      try {
        let from;
        if (values.from !== undefined) {
          from = (await p.machines()).find((m) => m.name === values.from);
          if (!from) throw new Error(`no machine ${values.from} of service ${cfg.service}`);
        }
        print(await p.provision({ from, originalAddress: values.original ?? from?.address }));
      } finally {
        await p.close();
      }
      return 0;
    }
    case "destroy": {
      const { values, positionals } = parse(rest, { uri: { type: "string" } }, 1);
      const uri = uriArg(values.uri, "destroy");
      const name = positionals[0];
      if (name === undefined || !NAME_RE.test(name))
        throw new UsageError("vm destroy: NAME of a machine is required");
      const h = await HypervisorConnection.open(uri);
      try {
        const d = (await h.list()).find((x) => x.name === name);
        if (!d) throw new Error(`no domain ${name} on ${uri}`);
        if (!d.machine) throw new Error(`${name} is not a tcp-replicator machine (no metadata): not touched`);
        const xml = await h.xml(name);
        await h.remove(name);
        // Only the disk and console this tool made for it (named after the machine) are removed.
        const removed: string[] = [];
        for (const m of xml.matchAll(/<source (?:file|path)='([^']+)'/g)) {
          const f = m[1]!;
          if (basename(f) === `${name}.qcow2` || basename(f) === `${name}.console`) {
            await rm(f, { force: true });
            removed.push(f);
          }
        }
        print({ destroyed: name, uri, machine: d.machine, removed: removed.sort() });
      } finally {
        await h.close();
      }
      return 0;
    }
    default:
      throw new UsageError(
        sub === undefined ? "vm: list, provision or destroy" : `vm: unknown command ${sub}`,
      );
  }
}
