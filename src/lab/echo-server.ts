// The lab's echo service: every byte received is sent back on the same connection. Used for RTT
// ping-pong and byte-stream checks, identical on every backend. pipe() applies backpressure, so a
// client that does not read cannot make the server buffer without limit.
import { createServer, type Server, type Socket } from "node:net";
import { parseArgs } from "node:util";

export function createEchoServer(): Server {
  const sockets = new Set<Socket>();
  const server = createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.on("error", () => socket.destroy());
    socket.on("close", () => sockets.delete(socket));
    socket.pipe(socket);
  });
  server.on("close", () => {
    for (const s of sockets) s.destroy();
  });
  return server;
}

function main(): void {
  const { values } = parseArgs({
    options: { port: { type: "string", default: "7000" }, host: { type: "string", default: "0.0.0.0" } },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    process.stderr.write(`echo-server: bad port ${values.port}\n`);
    process.exit(2);
  }
  const server = createEchoServer();
  server.listen({ port, host: values.host, backlog: 1024 }, () => {
    process.stderr.write(`echo-server listening on ${values.host}:${port}\n`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

if (import.meta.url === `file://${process.argv[1]}`) main();
