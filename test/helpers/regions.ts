// Guest memory in several regions for tests: SharedArrayBuffers placed at
// guest addresses (holes between them allowed), with reads and writes at
// guest addresses that cross from one region into the next; and a capture
// of the frames a TAP receives, from inside its namespace.

import type { MemoryRegion } from '../../backend';
import type { Netns } from '../../host/netns';
import { readyPython } from './netns-python';

export class RegionMem {
  readonly regions: { guestAddr: number; buffer: SharedArrayBuffer; u8: Uint8Array }[];

  constructor(layout: { guestAddr: number; size: number }[]) {
    this.regions = layout.map(({ guestAddr, size }) => {
      const buffer = new SharedArrayBuffer(size);
      return { guestAddr, buffer, u8: new Uint8Array(buffer) };
    });
  }

  /** The `memory` option for the device. */
  option(): MemoryRegion[] {
    return this.regions.map((r) => ({ guestAddr: r.guestAddr, memory: r.buffer }));
  }

  private at(addr: number): { u8: Uint8Array; off: number } {
    for (const r of this.regions) {
      if (addr >= r.guestAddr && addr < r.guestAddr + r.u8.length) return { u8: r.u8, off: addr - r.guestAddr };
    }
    throw new RangeError(`guest address 0x${addr.toString(16)} is in no region`);
  }

  write(addr: number, bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.length) {
      const { u8, off } = this.at(addr + done);
      const n = Math.min(bytes.length - done, u8.length - off);
      u8.set(bytes.subarray(done, done + n), off);
      done += n;
    }
  }

  read(addr: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const { u8, off } = this.at(addr + done);
      const n = Math.min(len - done, u8.length - off);
      out.set(u8.subarray(off, off + n), done);
      done += n;
    }
    return out;
  }
}

/**
 * Starts capturing, inside the namespace, the frames `ifname` receives (AF_PACKET) whose
 * EtherType is 0x88b5 (the tests' marker frames). Resolves once the socket is bound; `done()`
 * waits until `count` frames arrived or `ms` passed and returns them (Ethernet frames, in
 * arrival order).
 */
export async function captureFrames(ns: Netns, ifname: string, count: number, ms: number): Promise<{ done(): Promise<Uint8Array[]> }> {
  const py = `import socket,sys,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x88b5))
s.bind((${JSON.stringify(ifname)},0))
s.settimeout(0.2)
print('ready',flush=True)
n=0
end=time.time()+${ms / 1000}
while n<${count} and time.time()<end:
    try:
        f=s.recv(70000)
    except socket.timeout:
        continue
    print(f.hex(),flush=True)
    n+=1
`;
  const capture = await readyPython(ns, py, `capture on ${ifname}`);
  return {
    async done() {
      return (await capture.done()).map((h) => Uint8Array.from(Buffer.from(h, 'hex')));
    },
  };
}
