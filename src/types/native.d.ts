// Minimal typings for the native capture and injection packages (they ship none).
declare module "cap" {
  import type { EventEmitter } from "node:events";
  export class Cap extends EventEmitter {
    open(device: string, filter: string, bufSize: number, buffer: Buffer): string;
    close(): void;
    on(event: "packet", listener: (nbytes: number, truncated: boolean) => void): this;
  }
  const _default: { Cap: typeof Cap };
  export default _default;
}

declare module "raw-socket" {
  export interface RawSocket {
    send(
      buffer: Buffer,
      offset: number,
      length: number,
      address: string,
      beforeCallback: (() => void) | null,
      afterCallback: (error: Error | null, bytes: number) => void,
    ): void;
    setOption(level: number, option: number, value: number): void;
    /** The native socket: send() here is a synchronous sendto(). */
    wrap: {
      send(
        buffer: Buffer,
        offset: number,
        length: number,
        address: string,
        callback: (bytes: number) => void,
      ): void;
    };
    close(): void;
    on(event: "error", listener: (error: Error) => void): this;
  }
  const _default: {
    createSocket(options: { addressFamily?: number; protocol: number; bufferSize?: number }): RawSocket;
    AddressFamily: { IPv4: number; IPv6: number };
    SocketLevel: { SOL_SOCKET: number; IPPROTO_IP: number };
  };
  export default _default;
}
