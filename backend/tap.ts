// A TAP without a virtio device: the queue fds of an IFF_TAP|IFF_NO_PI|
// IFF_VNET_HDR|IFF_MULTI_QUEUE device, set up and handed out, for baselines
// and tools that do their own I/O on them (the benchmark's plain Node loop).
// VirtioNetDevice does not use it: it owns its TAP.

import * as fs from 'node:fs';

import { convert, InvalidArgumentError, NamespaceError, native } from './errors';
import { addon } from './native';
import { TUN } from './virtio';

export interface TapQueuesOptions {
  /** Network namespace (a name under /run/netns) to create the TAP in; default: this process's. */
  netns?: string;
  /** Queues to open (one fd each); 1 .. 256, default 1. */
  queues?: number;
  /** virtio_net_hdr size every frame carries (TUNSETVNETHDRSZ): 10, 12, 20 or 24 (with the UDP tunnel fields); default 12. Little-endian (TUNSETVNETLE). */
  vnetHdrLen?: number;
  /** TUN_F_* offloads the TAP may hand to the reader (TUNSETOFFLOAD); default 0. */
  offloads?: number;
}

/** The open queues of one TAP, brought up. Non-blocking fds; close() closes them all (the TAP goes with the last). */
export class TapQueues {
  private closed = false;

  private constructor(
    /** The TAP's name as the kernel reports it. */
    readonly name: string,
    /** One fd per queue: read()/write() move one frame each, virtio_net_hdr first. */
    readonly fds: readonly number[],
  ) {}

  static open(name: string, opts: TapQueuesOptions = {}): TapQueues {
    if (typeof name !== 'string' || name.length === 0 || Buffer.byteLength(name) > TUN.MAX_NAME || !/^[A-Za-z0-9_.-]+$/.test(name)) {
      throw new InvalidArgumentError(`TAP name '${name}' must be 1 to ${TUN.MAX_NAME} bytes of letters, digits, '_', '.' and '-'`);
    }
    const queues = opts.queues ?? 1;
    if (!Number.isInteger(queues) || queues < 1 || queues > TUN.MAX_QUEUES) {
      throw new InvalidArgumentError(`queues must be an integer from 1 to ${TUN.MAX_QUEUES}, got ${opts.queues}`);
    }
    const hdrLen = opts.vnetHdrLen ?? 12;
    if (hdrLen !== 10 && hdrLen !== 12 && hdrLen !== 20 && hdrLen !== 24) throw new InvalidArgumentError(`vnetHdrLen must be 10, 12, 20 or 24, got ${opts.vnetHdrLen}`);
    const offloads = opts.offloads ?? 0;
    if (!Number.isInteger(offloads) || offloads < 0) throw new InvalidArgumentError(`offloads must be a mask of TUN_F_* flags, got ${opts.offloads}`);
    let netnsPath: string | null = null;
    if (opts.netns !== undefined) {
      if (typeof opts.netns !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(opts.netns)) throw new InvalidArgumentError(`invalid network namespace name '${opts.netns}'`);
      netnsPath = `/run/netns/${opts.netns}`;
      if (!fs.existsSync(netnsPath)) throw new NamespaceError(`network namespace '${opts.netns}' does not exist (create it with: ip netns add ${opts.netns})`);
    }
    const a = addon();
    const what = `TAP '${name}'`;
    const fds: number[] = [];
    let kernelName = name;
    try {
      for (let i = 0; i < queues; i++) {
        const q = native(what, () => a.tapOpen(name, netnsPath, 0));
        fds.push(q.fd);
        kernelName = q.name;
        native(what, () => a.tapSetVnetHdrSz(q.fd, hdrLen));
        native(what, () => a.tapSetVnetLe(q.fd, true));
      }
      native(what, () => a.tapSetOffload(fds[0], offloads));
      native(what, () => a.netdevSetUp(netnsPath, kernelName, true));
    } catch (e) {
      for (const fd of fds) a.close(fd);
      throw convert(what, e);
    }
    return new TapQueues(kernelName, fds);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.fds) addon().close(fd);
  }
}
