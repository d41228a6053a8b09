import t from "tap";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WWW_FILES, WWW_MTIME, contentChunks, expectedSha256, writeWwwTree } from "../../src/lab/www.js";

t.test("file set spans 1 KiB to 64 MiB", async (t) => {
  t.equal(WWW_FILES[0]!.size, 1024);
  t.equal(WWW_FILES.at(-1)!.size, 64 * 1024 * 1024);
  t.equal(WWW_FILES.at(-1)!.name, "64M.bin");
});

t.test("content is deterministic and differs between files", async (t) => {
  const a = Buffer.concat([...contentChunks("1K.bin", 1024)]);
  const b = Buffer.concat([...contentChunks("1K.bin", 1024)]);
  const c = Buffer.concat([...contentChunks("4K.bin", 1024)]);
  t.equal(a.length, 1024);
  t.ok(a.equals(b));
  t.notOk(a.equals(c));
  t.throws(() => expectedSha256("nope.bin"), /no lab file/);
});

t.test("tree on disk matches the expected hashes and mtime", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "tr-www-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeWwwTree(dir);
  for (const f of WWW_FILES.filter((f) => f.size <= 1 << 20)) {
    const body = await readFile(join(dir, f.name));
    t.equal(body.length, f.size, `${f.name} size`);
    t.equal(createHash("sha256").update(body).digest("hex"), expectedSha256(f.name), `${f.name} hash`);
    t.equal((await stat(join(dir, f.name))).mtimeMs, WWW_MTIME.getTime(), `${f.name} mtime`);
  }
});
