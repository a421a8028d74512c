// Receive filter state set through the control queue (RX modes, MAC
// tables, VLAN ids) and its two projections: the TAP's own exact/multicast
// filter (TUNSETTXFILTER, the kernel drops early) and the exact per-frame
// rules the native engine applies to what the kernel lets through.

import { CTRL } from './virtio';

/** TUN_FLT_ALLMULTI from linux/if_tun.h. */
const TUN_FLT_ALLMULTI = 1;
/** The tun driver matches this many addresses exactly and hashes the rest (FLT_EXACT_COUNT). */
export const TUN_FILTER_EXACT = 8;
/** Upper bound on MAC table entries we accept per table; more gets ack ERR. */
export const MAC_TABLE_MAX = 1024;

/** What the guest's RX filter is now, as the 'rx-filter' event reports it. */
export interface RxFilterState {
  promisc: boolean;
  allmulti: boolean;
  alluni: boolean;
  nomulti: boolean;
  nouni: boolean;
  nobcast: boolean;
  /** Entries in the unicast and multicast MAC tables. */
  unicast: number;
  multicast: number;
  /** VLAN ids let through, or null when VLAN filtering is off. */
  vlans: number | null;
}

export interface RxFilterSnapshot {
  promisc: boolean;
  allmulti: boolean;
  alluni: boolean;
  nomulti: boolean;
  nouni: boolean;
  nobcast: boolean;
  /** Primary MAC followed by the unicast table, 6 bytes each. */
  unicast: Uint8Array;
  multicast: Uint8Array;
  /** 4096-bit VLAN filter (bit v set = VLAN v accepted); null = VLAN filtering off. */
  vlans: Uint8Array | null;
}

export class RxFilter {
  private promisc = true;
  private allmulti = false;
  private alluni = false;
  private nomulti = false;
  private nouni = false;
  private nobcast = false;
  private primary = new Uint8Array(6);
  private uni: Uint8Array = new Uint8Array(0);
  private multi: Uint8Array = new Uint8Array(0);
  private vlans: Uint8Array | null = null;

  /**
   * Device reset. Promiscuous until the driver says otherwise, as QEMU starts,
   * so a driver that never sends RX commands still receives everything.
   */
  reset(primary: Uint8Array, vlanFiltering = false): void {
    this.promisc = true;
    this.allmulti = this.alluni = this.nomulti = this.nouni = this.nobcast = false;
    this.primary = Uint8Array.from(primary);
    this.uni = new Uint8Array(0);
    this.multi = new Uint8Array(0);
    this.vlans = vlanFiltering ? new Uint8Array(512) : null;
  }

  setPrimary(mac: Uint8Array): void {
    this.primary = Uint8Array.from(mac);
  }

  /** An RX class command; false for an unknown command. */
  setMode(cmd: number, on: boolean): boolean {
    switch (cmd) {
      case CTRL.RX_PROMISC: this.promisc = on; return true;
      case CTRL.RX_ALLMULTI: this.allmulti = on; return true;
      case CTRL.RX_ALLUNI: this.alluni = on; return true;
      case CTRL.RX_NOMULTI: this.nomulti = on; return true;
      case CTRL.RX_NOUNI: this.nouni = on; return true;
      case CTRL.RX_NOBCAST: this.nobcast = on; return true;
      default: return false;
    }
  }

  /** MAC TABLE_SET data: u32 count + count × 6 (unicast), then the same for multicast. False when malformed. */
  setTables(data: Uint8Array): boolean {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    let off = 0;
    const table = (): Uint8Array | null => {
      if (off + 4 > data.length) return null;
      const n = dv.getUint32(off, true);
      off += 4;
      if (n > MAC_TABLE_MAX || off + 6 * n > data.length) return null;
      const t = data.slice(off, off + 6 * n);
      off += 6 * n;
      return t;
    };
    const uni = table();
    const multi = table();
    if (!uni || !multi || off !== data.length) return false;
    this.uni = uni;
    this.multi = multi;
    return true;
  }

  /** VLAN ADD/DEL; VLAN filtering turns on with the first command. */
  setVlan(vid: number, on: boolean): void {
    if (!this.vlans) this.vlans = new Uint8Array(512);
    if (on) this.vlans[vid >> 3] |= 1 << (vid & 7);
    else this.vlans[vid >> 3] &= ~(1 << (vid & 7));
  }

  snapshot(): RxFilterSnapshot {
    const unicast = new Uint8Array(6 + this.uni.length);
    unicast.set(this.primary);
    unicast.set(this.uni, 6);
    return {
      promisc: this.promisc,
      allmulti: this.allmulti,
      alluni: this.alluni,
      nomulti: this.nomulti,
      nouni: this.nouni,
      nobcast: this.nobcast,
      unicast,
      multicast: Uint8Array.from(this.multi),
      vlans: this.vlans ? Uint8Array.from(this.vlans) : null,
    };
  }

  /**
   * The TAP's own filter: a coarse superset of what the guest wants, so the kernel
   * drops most unwanted frames before they are copied. Count 0 disables it.
   */
  tapFilter(): { flags: number; macs: Uint8Array } {
    const none = { flags: 0, macs: new Uint8Array(0) };
    if (this.promisc || this.alluni) return none;
    const addrs: Uint8Array[] = [];
    if (!this.nouni) {
      addrs.push(this.primary);
      for (let i = 0; i < this.uni.length; i += 6) addrs.push(this.uni.subarray(i, i + 6));
    }
    // tun only matches the first TUN_FILTER_EXACT exactly and turns the filter off
    // when a unicast address falls past them, so unicast goes first.
    if (!this.nobcast) addrs.push(new Uint8Array([255, 255, 255, 255, 255, 255]));
    if (!this.nomulti) for (let i = 0; i < this.multi.length; i += 6) addrs.push(this.multi.subarray(i, i + 6));
    if (addrs.length === 0) addrs.push(new Uint8Array(6)); // nothing wanted: an address no frame carries
    const macs = new Uint8Array(6 * addrs.length);
    addrs.forEach((a, i) => macs.set(a, 6 * i));
    return { flags: this.allmulti && !this.nomulti ? TUN_FLT_ALLMULTI : 0, macs };
  }

  /**
   * Whether the guest asked for a frame with this destination MAC and VLAN id (-1: untagged).
   * Promiscuous mode takes everything, whatever the VLAN filter says, as QEMU's device does.
   */
  accepts(dst: Uint8Array, vid: number): boolean {
    if (this.promisc) return true;
    if (vid >= 0 && this.vlans && !(this.vlans[vid >> 3] & (1 << (vid & 7)))) return false;
    const isBroadcast = dst.every((b) => b === 0xff);
    if (isBroadcast) return !this.nobcast;
    if (dst[0] & 1) {
      if (this.nomulti) return false;
      return this.allmulti || inTable(this.multi, dst);
    }
    if (this.nouni) return false;
    return this.alluni || equal6(this.primary, dst, 0) || inTable(this.uni, dst);
  }

  describe(): RxFilterState {
    return {
      promisc: this.promisc,
      allmulti: this.allmulti,
      alluni: this.alluni,
      nomulti: this.nomulti,
      nouni: this.nouni,
      nobcast: this.nobcast,
      unicast: this.uni.length / 6,
      multicast: this.multi.length / 6,
      vlans: this.vlans ? countBits(this.vlans) : null,
    };
  }
}

function equal6(a: Uint8Array, b: Uint8Array, off: number): boolean {
  for (let i = 0; i < 6; i++) if (a[off + i] !== b[i]) return false;
  return true;
}

function inTable(t: Uint8Array, mac: Uint8Array): boolean {
  for (let i = 0; i < t.length; i += 6) if (equal6(t, mac, i)) return true;
  return false;
}

function countBits(b: Uint8Array): number {
  let n = 0;
  for (const x of b) for (let v = x; v; v &= v - 1) n++;
  return n;
}
