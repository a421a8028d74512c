// The announce a back end sends for a guest that moved (VHOST_USER_SEND_RARP):
// a RARP request from the guest's MAC to the broadcast address, the frame
// QEMU's own self-announce sends for NICs without a back end of their own, so
// that bridges and switches learn the guest's MAC on the new port. The guest
// answers nothing: only the frame's source address matters to a learning
// switch. (Guests that negotiated GUEST_ANNOUNCE announce themselves and QEMU
// does not ask.)

/** EtherType of RARP (RFC 903). */
export const ETHERTYPE_RARP = 0x8035;
/** ARP hardware type Ethernet, protocol type IPv4, opcode 3: "request reverse" (RFC 903). */
const ARP_HRD_ETHER = 1;
const ETHERTYPE_IPV4 = 0x0800;
const RARP_OP_REQUEST_REVERSE = 3;
/** The minimum Ethernet frame without its FCS: shorter frames are padded with zeros to it. */
export const ETH_MIN_FRAME = 60;

/** A 6-byte MAC as 'aa:bb:cc:dd:ee:ff'. */
export function macString(mac: Uint8Array): string {
  return [...mac.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/**
 * The announce frame for `mac` (6 bytes): broadcast destination, source `mac`, RARP request
 * with `mac` as both sender and target hardware address and no protocol addresses, padded
 * to ETH_MIN_FRAME.
 */
export function rarpFrame(mac: Uint8Array): Buffer {
  if (mac.length < 6) throw new RangeError(`a MAC has 6 bytes, got ${mac.length}`);
  const m = Buffer.from(mac.subarray(0, 6));
  const f = Buffer.alloc(ETH_MIN_FRAME);
  f.fill(0xff, 0, 6);
  m.copy(f, 6);
  f.writeUInt16BE(ETHERTYPE_RARP, 12);
  f.writeUInt16BE(ARP_HRD_ETHER, 14);
  f.writeUInt16BE(ETHERTYPE_IPV4, 16);
  f[18] = 6; // hardware address length
  f[19] = 4; // protocol address length
  f.writeUInt16BE(RARP_OP_REQUEST_REVERSE, 20);
  m.copy(f, 22); // sender hardware address; sender IPv4 (28..31) stays 0.0.0.0
  m.copy(f, 32); // target hardware address; target IPv4 (38..41) stays 0.0.0.0
  return f;
}
