// Runs in the client namespace during a failover trial: a ping-pong loop (64 B, one message in
// flight) for `ms` milliseconds, recording when each echo arrived (epoch ms, sub-ms precision)
// and checking every echoed byte. Prints JSON { replies: number[], error?: string }.
import { connect } from "node:net";

const [host, portArg, msArg] = process.argv.slice(2);
const until = Date.now() + Number(msArg);
const replies: number[] = [];
const sock = connect({ host: host!, port: Number(portArg), noDelay: true });
let expected: Buffer = Buffer.alloc(0);
let got = Buffer.alloc(0);
let i = 0;
let error: string | undefined;
const finish = () => {
  sock.destroy();
  process.stdout.write(JSON.stringify({ replies, error }) + "\n");
};
const send = () => {
  if (Date.now() > until) return finish();
  expected = Buffer.alloc(64, i++ & 0xff);
  got = Buffer.alloc(0);
  sock.write(expected);
};
sock.on("connect", send);
sock.on("data", (d: Buffer) => {
  got = Buffer.concat([got, d]);
  if (got.length < expected.length) return;
  replies.push(performance.timeOrigin + performance.now());
  if (!got.equals(expected)) {
    error = `echo ${i} differs`;
    return finish();
  }
  send();
});
sock.on("error", (e) => {
  error = e.message;
  finish();
});
