// Bad arguments give a clear error, exit 2 and change nothing on the system.
import t from "tap";
import { cli, namespaces, uniqueLabName } from "./helpers.js";

t.test("bad arguments change nothing", async (t) => {
  const name = uniqueLabName("args");
  const before = (await namespaces()).filter((n) => n.includes(name));
  const cases: Array<[string[], RegExp]> = [
    [["lab", "up", "--name", name, "--replicas", "6"], /replica count "6": must be an integer from 0 to 5/],
    [["lab", "up", "--name", name, "--replicas", "-1"], /replica count|argument/],
    [["lab", "up", "--name", name, "--replicas", "two"], /replica count "two"/],
    [["lab", "up", "--name", name, "--service", "ftp"], /service "ftp": must be one of echo, redis, http/],
    [["lab", "up", "--name", "Bad_Name"], /invalid lab name "Bad_Name"/],
    [["lab", "up", "--name", name, "--bogus"], /Unknown option '--bogus'/],
    [["lab", "up", "--name", name, "extra"], /unexpected argument .extra./i],
    [["lab", "down"], /--name NAME is required/],
    [["lab", "kill", "--name", name, "original", "--mode", "explode"], /invalid mode "explode"/],
    [["lab", "kill", "--name", name, "original"], /--mode is required/],
    [["lab", "kill", "--name", name, "--mode", "link"], /TARGET is required/],
    [["lab", "kill", "--name", name, "original", "--mode", "link"], /no lab named/],
    [["lab", "exec", "--name", name, "client"], /put the command after --/],
    [["lab", "exec", "--name", name, "--", "true"], /ROLE is required/],
    [["lab", "exec", "--name", name, "client", "--", "true"], /no lab named/],
    [["lab", "frobnicate"], /unknown subcommand "frobnicate"/],
    [["launch"], /unknown command "launch"/],
    [["ping", "--host", "not-an-ip", "--port", "7000"], /--host "not-an-ip"/],
    [["ping", "--host", "127.0.0.1", "--port", "70000"], /--port "70000"/],
  ];
  for (const [args, message] of cases) {
    const r = await cli(args);
    t.equal(r.code, 2, `exit 2 for ${args.join(" ")}`);
    t.match(r.stderr, message, `clear message for ${args.join(" ")}`);
    t.equal(r.stdout, "", "nothing on stdout");
  }
  t.same(
    (await namespaces()).filter((n) => n.includes(name)),
    before,
    "no namespace created",
  );
  const help = await cli(["--help"]);
  t.equal(help.code, 0);
  t.match(help.stdout, /lab up \[--name NAME\]/);
});
