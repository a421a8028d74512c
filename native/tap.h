// The TAP device and its network interface, as plain C++ over Linux syscalls:
// opening queues of a vnet-hdr multi-queue TAP (optionally inside a network
// namespace), the TUN ioctls, and interface control (index, MAC, MTU, flags)
// through an ioctl socket. No N-API here: tap_binding.cc turns these results
// into JS values and errors, so this layer stays usable from tests and tools.
#pragma once
#include <cstdint>
#include <string>

namespace vt {

// Outcome of a call: err == 0 on success, else the errno of the first failing
// system call, which one it was, and what step of the operation it served, so
// the binding can explain the failure ("opening network namespace", ...).
struct TapResult {
  int err = 0;
  const char* syscall = "";  // e.g. "open", "setns", "ioctl(TUNSETIFF)"
  const char* step = "";     // one of the kStep* strings below
  bool ok() const { return err == 0; }
};

// Steps a TapResult may name; the binding compares against these pointers.
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

// Interface names are at most IFNAMSIZ-1 bytes (the kernel needs the NUL).
constexpr size_t kMaxIfName = 15;

// Opens one queue of TAP `name` with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|
// IFF_MULTI_QUEUE|extraFlags; the first call creates the device, each further
// call with the same name adds a queue. `netnsPath` (nullable) is the network
// namespace to create/find the device in; the calling thread always returns to
// its own namespace before this returns. On success *fd is the queue
// (O_NONBLOCK|O_CLOEXEC) and *actualName the kernel's name for the device.
TapResult TapOpen(const std::string& name, const char* netnsPath, int extraFlags, int* fd,
                  std::string* actualName);

TapResult TapGetFeatures(int fd, unsigned* features);
TapResult TapSetVnetHdrSz(int fd, int size);
TapResult TapGetVnetHdrSz(int fd, int* size);
TapResult TapSetVnetLe(int fd, bool on);
TapResult TapSetOffload(int fd, unsigned tunFlags);
// attach: IFF_ATTACH_QUEUE, else IFF_DETACH_QUEUE.
TapResult TapSetQueue(int fd, bool attach);
TapResult TapSetCarrier(int fd, bool up);
// Steers every frame the kernel sends to the TAP to queue `queue` (a BPF
// program set with TUNSETSTEERINGEBPF); a negative queue removes the program
// and the kernel's own flow steering applies again.
TapResult TapSteerAllTo(int fd, int queue);
// `macs` holds `count` 6-byte addresses back to back.
TapResult TapSetTxFilter(int fd, uint16_t flags, const uint8_t* macs, uint16_t count);
TapResult TapSetSndBuf(int fd, int bytes);
TapResult TapClose(int fd);

struct NetdevState {
  int ifindex = 0;
  uint8_t mac[6] = {};
  int mtu = 0;
  unsigned flags = 0;  // SIOCGIFFLAGS: the low 16 IFF_* bits
};

// Interface control in `netnsPath` (nullable: the thread's own namespace).
TapResult NetdevGet(const char* netnsPath, const std::string& name, NetdevState* out);
TapResult NetdevSetUp(const char* netnsPath, const std::string& name, bool up);
TapResult NetdevSetMtu(const char* netnsPath, const std::string& name, int mtu);
TapResult NetdevSetMac(const char* netnsPath, const std::string& name, const uint8_t mac[6]);

// The calling thread's network namespace as the kernel names it ("net:[4026531840]").
TapResult CurrentNetns(std::string* out);

}  // namespace vt
