// The TAP device and its network interface, as plain C++ over Linux syscalls:
// opening queues of a vnet-hdr multi-queue TAP (optionally inside a network
// namespace), the TUN ioctls, and interface control (index, MAC, MTU, flags)
// through an ioctl socket. No N-API here: tap_binding.cc turns these results
// into JS values and errors, so this layer stays usable from tests and tools.
#pragma once
#include <cstdint>
#include <string>

#include "status.h"

namespace vt {

// Every call returns a SysResult (status.h): err == 0 on success, else the
// errno of the first failing system call, which one it was, and the step of
// the operation it served, so the binding can explain the failure.

// Steps a SysResult from here may name; the binding compares against these pointers.
extern const char* const kStepNetnsSave;     // opening /proc/thread-self/ns/net
extern const char* const kStepNetnsOpen;     // opening the namespace path
extern const char* const kStepNetnsEnter;    // setns into it
extern const char* const kStepName;          // validating the interface name
extern const char* const kStepOpenTun;       // opening /dev/net/tun
extern const char* const kStepFeatures;      // TUNGETFEATURES / missing features
extern const char* const kStepSetIff;        // TUNSETIFF
extern const char* const kStepIoctl;         // any later TUN ioctl
extern const char* const kStepSocket;        // creating the ioctl socket
extern const char* const kStepNetdev;        // an SIOC* request
extern const char* const kStepReadlink;      // reading the thread's namespace id
extern const char* const kStepDiscard;       // reading frames off a queue to discard them
extern const char* const kStepLock;          // binding the TAP's lock socket

// Interface names are at most IFNAMSIZ-1 bytes (the kernel needs the NUL).
constexpr size_t kMaxIfName = 15;

// Opens one queue of TAP `name` with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|
// IFF_MULTI_QUEUE|extraFlags; the first call creates the device, each further
// call with the same name adds a queue. `netnsPath` (nullable) is the network
// namespace to create/find the device in; the calling thread always returns to
// its own namespace before this returns. On success *fd is the queue
// (O_NONBLOCK|O_CLOEXEC) and *actualName the kernel's name for the device.
SysResult TapOpen(const std::string& name, const char* netnsPath, int extraFlags, int* fd,
                  std::string* actualName);

// Claims TAP `name` in `netnsPath` (nullable) for this process: binds an
// abstract Unix socket "vhost-tap/tap/NAME" created inside that namespace
// (abstract names are per network namespace, so the namespace is part of the
// name without spelling it). The kernel releases it when the fd closes or the
// process dies, so a crashed owner never leaves a stale lock. Two back ends on
// one multiqueue TAP would each attach queues and silently split the host's
// traffic; the second gets EADDRINUSE here, and *holderPid is the owner's pid
// when it could be learned (else 0).
SysResult TapLock(const std::string& name, const char* netnsPath, int* fd, int* holderPid);

SysResult TapGetFeatures(int fd, unsigned* features);
SysResult TapSetVnetHdrSz(int fd, int size);
SysResult TapGetVnetHdrSz(int fd, int* size);
SysResult TapSetVnetLe(int fd, bool on);
SysResult TapSetOffload(int fd, unsigned tunFlags);
// attach: IFF_ATTACH_QUEUE, else IFF_DETACH_QUEUE.
SysResult TapSetQueue(int fd, bool attach);
SysResult TapSetCarrier(int fd, bool up);
// Steers every frame the kernel sends to the TAP to queue `queue` (a BPF
// program set with TUNSETSTEERINGEBPF); a negative queue removes the program
// and the kernel's own flow steering applies again.
SysResult TapSteerAllTo(int fd, int queue);
// Attaches a loaded steering program (its fd; tun takes its own reference)
// to the TAP, for every queue; -1 removes it (the kernel's own steering).
SysResult TapSetSteeringProgram(int fd, int prog);
// `macs` holds `count` 6-byte addresses back to back.
SysResult TapSetTxFilter(int fd, uint16_t flags, const uint8_t* macs, uint16_t count);
SysResult TapSetSndBuf(int fd, int bytes);
// Reads and throws away up to `max` frames the queue behind `fd` (O_NONBLOCK)
// holds, stopping when it is empty; *discarded says how many. For a queue about
// to be detached with no guest buffers for its frames: the kernel would free
// them on detach and count them nowhere, read here they are in the TAP's
// tx_packets and the caller counts them as a named drop.
SysResult TapDiscardQueued(int fd, int max, int* discarded);
SysResult TapClose(int fd);

struct NetdevState {
  int ifindex = 0;
  uint8_t mac[6] = {};
  int mtu = 0;
  unsigned flags = 0;  // SIOCGIFFLAGS: the low 16 IFF_* bits
};

// Interface control in `netnsPath` (nullable: the thread's own namespace).
SysResult NetdevGet(const char* netnsPath, const std::string& name, NetdevState* out);
SysResult NetdevSetUp(const char* netnsPath, const std::string& name, bool up);
SysResult NetdevSetMtu(const char* netnsPath, const std::string& name, int mtu);
SysResult NetdevSetMac(const char* netnsPath, const std::string& name, const uint8_t mac[6]);

// The calling thread's network namespace as the kernel names it ("net:[4026531840]").
SysResult CurrentNetns(std::string* out);

}  // namespace vt
