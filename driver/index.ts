// `vhost-tap/driver`: the guest (driver) side of virtio-net for emulator
// authors and test writers, the same code guest-sim runs: guest memory as
// regions, split and packed virtqueues (IN_ORDER optional), a queue pair's RX/TX with virtio_net_hdr, the
// control queue, and the setup steps (negotiation, carving rings and buffers).

export { DriverMemory, GuestAddressError, driverMemory } from './memory';
export type { BufferRegion, DriverMemoryInput, Region } from './memory';
export { DriverQueue, DeviceBugError, needEvent } from './virtqueue';
export type { QueueAddrs, Buf, UsedElem, Virtqueue } from './virtqueue';
export { PackedDriverQueue, PACKED, openVirtqueue } from './packed';
export type { VirtqueueOptions } from './packed';
export { NetQueuePair, GuestAllocator, negotiate, setUpQueuePair, resetQueue, readNetHdr, writeNetHdr, NO_OFFLOAD } from './net';
export type { NetHdr, RxFrame, BufferArea, DriverQueueSetup, NetQueuePairOptions, NetQueuePairStats, QueuePairLayout } from './net';
export { ControlDriver, CTRL_BUF_BYTES } from './control';
