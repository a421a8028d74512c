// The vhost-user message codec (QEMU docs/interop/vhost-user.rst), back-end
// side: the header, each request's payload size and file-descriptor count,
// decoding of the payloads the back end acts on (u64, vring state, vring
// address, memory table), replies, and an incremental reader that asks for
// exactly the bytes of one message at a time so that the fds of the next
// message are never read with this one. Plain C++, no Node: the addon, a
// fuzzer and C++ tests link the same file. Numbers on the wire are in the
// host's byte order (the spec says "machine native").
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace vt {
namespace vhost_user {

// Front-end requests (the spec's "front-end message types").
enum Request : uint32_t {
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
};
constexpr uint32_t kLastKnownRequest = kGetStatus;

// The spec's name without the VHOST_USER_ prefix, or nullptr for an unknown number.
const char* RequestName(uint32_t request);

// Header flags: the low two bits are the protocol version.
constexpr uint32_t kVersion = 1;
constexpr uint32_t kVersionMask = 0x3;
constexpr uint32_t kFlagReply = 1u << 2;
constexpr uint32_t kFlagNeedReply = 1u << 3;
constexpr uint32_t kKnownFlags = kVersionMask | kFlagReply | kFlagNeedReply;

constexpr size_t kHeaderSize = 12;
// Largest payload read at all. The largest the spec defines is 268 bytes (a
// config-space message with 256 bytes of config); 4 KiB leaves room to read an
// unknown or unsupported request whole and refuse it while keeping the stream
// in step. A header announcing more is not trusted: the connection ends.
constexpr uint32_t kMaxPayload = 4096;
// The spec passes at most 8 descriptors in one message (SET_MEM_TABLE's 8
// regions); the control buffer holds exactly that many, so more arrive
// truncated (MSG_CTRUNC) and the message is refused.
constexpr size_t kMaxFds = 8;
constexpr uint32_t kMaxMemRegions = 8;

// SET_VRING_KICK/CALL/ERR u64: bits 0-7 the vring index, bit 8 "no fd" (polling).
constexpr uint64_t kVringIndexMask = 0xff;
constexpr uint64_t kVringNoFd = 1u << 8;

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
enum ProtocolFeature : uint32_t {
  kProtoMq = 0,
  kProtoLogShmfd = 1,
  kProtoRarp = 2,
  kProtoReplyAck = 3,
  kProtoNetMtu = 4,
  kProtoBackendReq = 5,
  kProtoCrossEndian = 6,
  kProtoCryptoSession = 7,
  kProtoPagefault = 8,
  kProtoConfig = 9,
  kProtoBackendSendFd = 10,
  kProtoHostNotifier = 11,
  kProtoInflightShmfd = 12,
  kProtoResetDevice = 13,
  kProtoInbandNotifications = 14,
  kProtoConfigureMemSlots = 15,
  kProtoStatus = 16,
};

// Virtio feature bit 30, reused by vhost-user to announce protocol features.
constexpr uint32_t kFProtocolFeatures = 30;

struct Header {
  uint32_t request = 0;
  uint32_t flags = 0;
  uint32_t size = 0;
};

struct VringState {
  uint32_t index = 0;
  uint32_t num = 0;
};
constexpr size_t kVringStateSize = 8;

struct VringAddr {
  uint32_t index = 0;
  uint32_t flags = 0;
  uint64_t desc = 0;
  uint64_t used = 0;
  uint64_t avail = 0;
  uint64_t log = 0;
};
constexpr size_t kVringAddrSize = 40;

struct MemRegion {
  uint64_t guest_addr = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;
  uint64_t mmap_offset = 0;
};
constexpr size_t kMemRegionSize = 32;
// nregions (u32) and padding (u32) before the regions.
constexpr size_t kMemTableHeaderSize = 8;

// How a request's payload is decoded.
enum class PayloadKind { kNone, kU64, kVringState, kVringAddr, kMemTable, kOpaque };

// One received message. `fds` are owned by the holder of the Message: the
// reader closes those of a refused message; an accepted one hands them on.
struct Message {
  Header hdr;
  std::vector<uint8_t> payload;
  std::vector<int> fds;
  PayloadKind kind = PayloadKind::kNone;
  uint64_t u64 = 0;
  VringState state;
  VringAddr addr;
  std::vector<MemRegion> regions;

  bool need_reply() const { return (hdr.flags & kFlagNeedReply) != 0; }
};

// Which side reads: a back end receives requests (reply flag clear); a front
// end (a test client) receives replies (reply flag set).
enum class Role { kBackEnd, kFrontEnd };

// Whether a header can be trusted enough to read its payload: version 1, only
// known flag bits, the reply flag as `role` expects, size <= kMaxPayload.
// When it cannot, the stream is out of step and the connection must end.
bool CheckHeader(const Header& h, Role role, std::string* why);

// The back end's per-request rules, applied once payload and fds are in:
// payload size, number of fds, field ranges the codec can judge alone
// (region count, vring index bits). Decodes the payload into `m` on success.
// Unknown requests are refused here; requests the codec knows but the session
// does not implement pass, so the session can name what it does not support.
bool DecodeRequest(Message* m, std::string* why);

// Reads messages from a byte stream in pieces. Use: Want() bytes into
// Buffer(), then Got(n, fds...); repeat. Never asks for bytes past the end of
// the current message.
class Reader {
 public:
  explicit Reader(Role role) : role_(role) { Reset(); }
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  enum class Result {
    kNeedMore,   // keep reading
    kMessage,    // Take() the decoded message
    kRefused,    // a whole message was read but breaks a rule (why()); its fds are closed; the stream is still in step
    kFatal,      // the header cannot be trusted (why()); end the connection
  };

  size_t Want() const;
  uint8_t* Buffer();
  // `n` bytes were written to Buffer(); `fds` arrived with them; `ctrunc` when
  // the kernel truncated the control data (some fds were dropped).
  Result Got(size_t n, const int* fds, size_t nfds, bool ctrunc);
  Message Take();
  const std::string& why() const { return why_; }
  // Header of the message just refused (kRefused): the session may answer it.
  const Header& refused_header() const { return refused_; }

 private:
  void Reset();
  void CloseFds();

  Role role_;
  bool in_payload_ = false;
  size_t have_ = 0;
  uint8_t header_[kHeaderSize];
  Message msg_;
  bool tainted_ = false;
  std::string taint_why_;
  std::string why_;
  Header refused_;
};

// A reply to `request`: header with version and reply flag, then `payload`.
std::vector<uint8_t> EncodeReply(uint32_t request, const void* payload, size_t len);
std::vector<uint8_t> EncodeReplyU64(uint32_t request, uint64_t value);
std::vector<uint8_t> EncodeReplyState(uint32_t request, VringState s);
// A request (for test front ends): header with version and `flags`, then `payload`.
std::vector<uint8_t> EncodeRequest(uint32_t request, uint32_t flags, const void* payload, size_t len);

}  // namespace vhost_user
}  // namespace vt
