// Runs in the client namespace during a failover trial: a ping-pong loop (one request in flight)
// for `ms` milliseconds, recording when each answer arrived (epoch ms, sub-ms precision) and
// checking every answer byte. Prints JSON { replies: number[], error?: string }.
//
//   node stall-client.js HOST PORT MS [echo|redis]
//   echo:  64 B messages, each echoed back;   redis: PING, answered +PONG.
import { connect } from "node:net";

const [host, portArg, msArg, protocol = "echo"] = process.argv.slice(2);
if (protocol !== "echo" && protocol !== "redis") throw new Error(`unknown protocol ${protocol}`);
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
  got = Buffer.alloc(0);
  if (protocol === "redis") {
    expected = Buffer.from("+PONG\r\n");
    sock.write("PING\r\n");
  } else {
    expected = Buffer.alloc(64, i & 0xff);
    sock.write(expected);
  }
  i++;
};
sock.on("connect", send);
sock.on("data", (d: Buffer) => {
  got = Buffer.concat([got, d]);
  if (got.length < expected.length) return;
  replies.push(performance.timeOrigin + performance.now());
  if (!got.equals(expected)) {
    error = `answer ${i} differs`;
    return finish();
  }
  send();
});
sock.on("error", (e) => {
  error = e.message;
  finish();
});
