// Machine disks: copy-on-write qcow2 overlays on the image's read-only root disk (the CygnusCloud
// way: one base image, a thin overlay per machine). A fork copies the source machine's overlay
// while the source is paused, so the copy is the source's disk at that instant, sharing the same
// base; the copy is a few MB (what the machine wrote), so the pause lasts milliseconds.
//
// The disk directory must be reachable under the same path by every hypervisor host (shared
// storage, as OpenNebula's "shared" transfer manager assumes); in the lab all hosts are one.
import { copyFile, constants, mkdir, rm, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { run } from "../sys/command.js";

export class DiskError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DiskError";
  }
}

export class DiskStore {
  constructor(
    /** Where overlays live; created on first use. */
    readonly dir: string,
    /** The image's root disk (qcow2), never written. */
    readonly base: string,
  ) {}

  path(machine: string): string {
    return join(this.dir, `${machine}.qcow2`);
  }

  consolePath(machine: string): string {
    return join(this.dir, `${machine}.console`);
  }

  /** A fresh overlay on the base image for a new machine. */
  async create(machine: string): Promise<string> {
    try {
      await stat(this.base);
    } catch {
      throw new DiskError(`base image ${this.base} not found (npm run vm-image builds it)`);
    }
    await mkdir(this.dir, { recursive: true });
    const path = this.path(machine);
    await this.refuseExisting(path);
    try {
      await run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", this.base, path]);
    } catch (e) {
      await rm(path, { force: true });
      throw new DiskError(`creating the overlay of ${machine}: ${(e as Error).message}`);
    }
    return path;
  }

  /**
   * The source machine's disk as it is now, for a new machine. The caller pauses the source
   * first: its writes reach the file at once (cache=directsync), so the file is consistent.
   */
  async fork(source: string, machine: string): Promise<string> {
    const from = this.path(source);
    const to = this.path(machine);
    try {
      await stat(from);
    } catch {
      throw new DiskError(`no disk for ${source} in ${this.dir}`);
    }
    await this.refuseExisting(to);
    try {
      // A reflink where the file system offers one, a plain copy elsewhere (qcow2 overlays of a
      // service machine are small).
      await copyFile(from, to, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
    } catch (e) {
      await rm(to, { force: true });
      throw new DiskError(`copying the disk of ${source}: ${(e as Error).message}`);
    }
    return to;
  }

  /** Removes a machine's overlay and console log (its base stays). Idempotent. */
  async remove(machine: string): Promise<void> {
    await rm(this.path(machine), { force: true });
    await rm(this.consolePath(machine), { force: true });
  }

  private async refuseExisting(path: string): Promise<void> {
    try {
      await stat(path);
    } catch {
      return;
    }
    throw new DiskError(`${basename(path)} exists already in ${this.dir}: another machine's disk`);
  }
}
