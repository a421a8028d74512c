// The driver side of the control virtqueue: one command in flight at a time,
// { class, command, data } readable, one ack byte writable, as Linux's
// virtio_net does. Runs on the main thread, where the device processes the
// queue, so waiting is asynchronous.

import { CTRL, encodeHashConfig, encodeRssConfig, VirtioNetDevice } from '../backend';
import { DriverMemory, DriverMemoryInput } from './memory';
import { openVirtqueue, VirtqueueOptions } from './packed';
import { QueueAddrs, Virtqueue } from './virtqueue';

/** Bytes reserved for one command: class, command and the largest data we send (MAC tables). */
export const CTRL_BUF_BYTES = 8192;

/** A command the device does not answer within this time means the device is stuck. */
const CTRL_TIMEOUT_MS = 5000;

export class ControlDriver {
  private readonly q: Virtqueue;
  /** The command buffer and its ack byte (one region). */
  private readonly u8: Uint8Array;
  private busy: Promise<unknown> = Promise.resolve();
  /** The command that timed out, if one did: the queue is unusable until a reset. */
  private stuck: string | undefined;

  constructor(
    private readonly device: VirtioNetDevice,
    mem: DriverMemory | DriverMemoryInput,
    private readonly index: number,
    addrs: QueueAddrs,
    /** VIRTIO_F_RING_EVENT_IDX negotiated, or the ring options (packed, IN_ORDER) too. */
    ring: boolean | VirtqueueOptions,
    /** Guest address of CTRL_BUF_BYTES + 1 bytes for the command and its ack, in one region. */
    private readonly buf: number,
  ) {
    this.q = openVirtqueue(mem, addrs, typeof ring === 'boolean' ? { eventIdx: ring } : ring);
    this.u8 = this.q.memory.view(buf, CTRL_BUF_BYTES + 1);
  }

  /** Sends one command and resolves with the device's ack (CTRL.OK or CTRL.ERR). */
  async command(cls: number, cmd: number, data: Uint8Array = new Uint8Array(0)): Promise<number> {
    return (await this.query(cls, cmd, data, 0)).ack === CTRL.OK ? CTRL.OK : CTRL.ERR;
  }

  /**
   * VIRTIO_NET_CTRL_MQ_RSS_CONFIG (needs VIRTIO_NET_F_RSS): the Toeplitz key (at most the
   * device's rss_max_key_size), the hash types (HASH_TYPE.* bits within supported_hash_types),
   * the indirection table (a power-of-two length up to rss_max_indirection_table_length, each
   * entry a receive queue index below `pairs`), the queue for frames no type matches, and
   * `pairs` (max_tx_vq), which also sets how many queue pairs run, as VQ_PAIRS_SET does.
   */
  setRss(c: { key: Uint8Array; hashTypes: number; table: ArrayLike<number>; unclassifiedQueue?: number; pairs: number }): Promise<number> {
    return this.command(CTRL.CLASS_MQ, CTRL.MQ_RSS_CONFIG, encodeRssConfig(c));
  }

  /** VIRTIO_NET_CTRL_MQ_HASH_CONFIG (HASH_REPORT without RSS): key and hash types for hash reports only. */
  setHashConfig(c: { key: Uint8Array; hashTypes: number }): Promise<number> {
    return this.command(CTRL.CLASS_MQ, CTRL.MQ_HASH_CONFIG, encodeHashConfig(c));
  }

  /**
   * Sends one command that returns `resultLen` bytes before its ack (e.g. NOTF_COAL_VQ_GET:
   * 8) and resolves with both, the ack byte as the device wrote it (0xff if it wrote none);
   * the result means something only when the ack is CTRL.OK.
   */
  query(cls: number, cmd: number, data: Uint8Array, resultLen: number): Promise<{ ack: number; result: Uint8Array }> {
    const next = this.busy.then(() => this.send(cls, cmd, data, resultLen));
    this.busy = next.catch(() => undefined);
    return next;
  }

  private async send(cls: number, cmd: number, data: Uint8Array, resultLen: number): Promise<{ ack: number; result: Uint8Array }> {
    // The buffers of an unanswered command still belong to the device: a late
    // answer to it must never be read as the answer to a newer one.
    if (this.stuck) throw new Error(`control queue stuck: ${this.stuck} got no answer; reset the device`);
    if (2 + data.length + resultLen > CTRL_BUF_BYTES) throw new RangeError(`control command data of ${data.length} bytes is too long`);
    const ack = CTRL_BUF_BYTES;
    const result = 2 + data.length;
    this.u8[0] = cls;
    this.u8[1] = cmd;
    this.u8.set(data, 2);
    this.u8.fill(0, result, result + resultLen);
    this.u8[ack] = 0xff;
    // As Linux's virtnet_send_command: the command readable, then the result and the ack
    // writable, each in its own buffer.
    const head = this.q.add([
      { addr: this.buf, len: 2 + data.length, write: false },
      ...(resultLen ? [{ addr: this.buf + result, len: resultLen, write: true }] : []),
      { addr: this.buf + ack, len: 1, write: true },
    ]);
    if (this.q.publish()) this.device.kick(this.index);
    const deadline = Date.now() + CTRL_TIMEOUT_MS;
    for (;;) {
      const u = this.q.popUsed();
      if (u && u.id === head) {
        return { ack: this.u8[ack], result: this.u8.slice(result, result + resultLen) };
      }
      if (u) throw new Error(`control command ${cls}/${cmd}: the device returned chain ${u.id}, not ${head}`);
      if (Date.now() > deadline) {
        this.stuck = `command ${cls}/${cmd}`;
        throw new Error(`control command ${cls}/${cmd}: no answer from the device within ${CTRL_TIMEOUT_MS} ms`);
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }
}
