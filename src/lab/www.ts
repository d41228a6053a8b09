// The http service's document tree: files from 1 KiB to 64 MiB whose bytes are a pure function of
// the file name (AES-128-CTR keystream keyed by the name's hash) and whose mtime is fixed, so every
// backend serves identical bytes with identical ETags, and a test can compute the expected SHA-256
// without trusting any server.
import { createCipheriv, createHash } from "node:crypto";
import { mkdir, open, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";

export const WWW_FILES: ReadonlyArray<{ name: string; size: number }> = [
  1, 4, 16, 64, 256, 1024, 4096, 16384, 65536,
].map((kib) => ({ name: kib >= 1024 ? `${kib / 1024}M.bin` : `${kib}K.bin`, size: kib * 1024 }));

/** 2013-06-01T00:00:00Z, the year of the thesis this product grew from. */
export const WWW_MTIME = new Date(Date.UTC(2013, 5, 1));

export const INDEX_HTML = `<!doctype html>
<html><head><title>tcp-replicator lab</title></head>
<body><h1>tcp-replicator lab</h1><ul>
${WWW_FILES.map((f) => `<li><a href="/${f.name}">${f.name}</a> (${f.size} bytes)</li>`).join("\n")}
</ul></body></html>
`;

const CHUNK = 1 << 20;

/** Yields the deterministic content of `name`, `size` bytes, in chunks of at most 1 MiB. */
export function* contentChunks(name: string, size: number): Generator<Buffer> {
  const key = createHash("sha256").update(`tcp-replicator-www:${name}`).digest().subarray(0, 16);
  const cipher = createCipheriv("aes-128-ctr", key, Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  for (let left = size; left > 0; left -= CHUNK) {
    yield cipher.update(zeros.subarray(0, Math.min(CHUNK, left)));
  }
}

export function expectedSha256(name: string): string {
  const file = WWW_FILES.find((f) => f.name === name);
  if (!file) throw new Error(`no lab file named ${name}`);
  const h = createHash("sha256");
  for (const chunk of contentChunks(file.name, file.size)) h.update(chunk);
  return h.digest("hex");
}

/** Writes the tree into `dir` (created if needed) with world-readable files and the fixed mtime. */
export async function writeWwwTree(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  for (const f of WWW_FILES) {
    const path = join(dir, f.name);
    const fh = await open(path, "w", 0o644);
    try {
      for (const chunk of contentChunks(f.name, f.size)) await fh.write(chunk);
    } finally {
      await fh.close();
    }
    await utimes(path, WWW_MTIME, WWW_MTIME);
  }
  const index = join(dir, "index.html");
  await writeFile(index, INDEX_HTML, { mode: 0o644 });
  await utimes(index, WWW_MTIME, WWW_MTIME);
}
