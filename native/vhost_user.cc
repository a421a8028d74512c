// vhost-user message codec (see vhost_user.h).
#include "vhost_user.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace vt {
namespace vhost_user {

namespace {

// What the codec knows of each request: its payload, exact payload size (or
// the memory table's own rule) and how many fds come with it.
enum class FdRule {
  kNone,       // no fds
  kOne,        // exactly one
  kVring,      // one, unless the u64 has the no-fd bit
  kRegions,    // one per memory region
  kOptional,   // zero or one (REM_MEM_REG: the spec tolerates one, to be closed)
  kLogBase,    // zero or one (one with LOG_SHMFD)
};

struct Rule {
  const char* name;
  PayloadKind kind;
  int size;  // exact payload size; -1: decided by the payload itself
  FdRule fds;
};

constexpr Rule kUnknown{nullptr, PayloadKind::kOpaque, -1, FdRule::kNone};

const Rule& RuleOf(uint32_t request) {
  static const Rule kRules[kLastKnownRequest + 1] = {
      kUnknown,                                                            // 0: none
      {"GET_FEATURES", PayloadKind::kNone, 0, FdRule::kNone},              // 1
      {"SET_FEATURES", PayloadKind::kU64, 8, FdRule::kNone},               // 2
      {"SET_OWNER", PayloadKind::kNone, 0, FdRule::kNone},                 // 3
      {"RESET_OWNER", PayloadKind::kNone, 0, FdRule::kNone},               // 4
      {"SET_MEM_TABLE", PayloadKind::kMemTable, -1, FdRule::kRegions},     // 5
      {"SET_LOG_BASE", PayloadKind::kOpaque, 16, FdRule::kLogBase},        // 6
      {"SET_LOG_FD", PayloadKind::kNone, 0, FdRule::kOne},                 // 7
      {"SET_VRING_NUM", PayloadKind::kVringState, 8, FdRule::kNone},       // 8
      {"SET_VRING_ADDR", PayloadKind::kVringAddr, 40, FdRule::kNone},      // 9
      {"SET_VRING_BASE", PayloadKind::kVringState, 8, FdRule::kNone},      // 10
      {"GET_VRING_BASE", PayloadKind::kVringState, 8, FdRule::kNone},      // 11
      {"SET_VRING_KICK", PayloadKind::kU64, 8, FdRule::kVring},            // 12
      {"SET_VRING_CALL", PayloadKind::kU64, 8, FdRule::kVring},            // 13
      {"SET_VRING_ERR", PayloadKind::kU64, 8, FdRule::kVring},             // 14
      {"GET_PROTOCOL_FEATURES", PayloadKind::kNone, 0, FdRule::kNone},     // 15
      {"SET_PROTOCOL_FEATURES", PayloadKind::kU64, 8, FdRule::kNone},      // 16
      {"GET_QUEUE_NUM", PayloadKind::kNone, 0, FdRule::kNone},             // 17
      {"SET_VRING_ENABLE", PayloadKind::kVringState, 8, FdRule::kNone},    // 18
      {"SEND_RARP", PayloadKind::kU64, 8, FdRule::kNone},                  // 19
      {"NET_SET_MTU", PayloadKind::kU64, 8, FdRule::kNone},                // 20
      {"SET_BACKEND_REQ_FD", PayloadKind::kNone, 0, FdRule::kOne},         // 21
      {"IOTLB_MSG", PayloadKind::kOpaque, -1, FdRule::kNone},              // 22
      {"SET_VRING_ENDIAN", PayloadKind::kVringState, 8, FdRule::kNone},    // 23
      {"GET_CONFIG", PayloadKind::kOpaque, -1, FdRule::kNone},             // 24
      {"SET_CONFIG", PayloadKind::kOpaque, -1, FdRule::kNone},             // 25
      {"CREATE_CRYPTO_SESSION", PayloadKind::kOpaque, -1, FdRule::kNone},  // 26
      {"CLOSE_CRYPTO_SESSION", PayloadKind::kU64, 8, FdRule::kNone},       // 27
      {"POSTCOPY_ADVISE", PayloadKind::kNone, 0, FdRule::kNone},           // 28
      {"POSTCOPY_LISTEN", PayloadKind::kNone, 0, FdRule::kNone},           // 29
      {"POSTCOPY_END", PayloadKind::kNone, 0, FdRule::kNone},              // 30
      {"GET_INFLIGHT_FD", PayloadKind::kOpaque, -1, FdRule::kNone},        // 31
      {"SET_INFLIGHT_FD", PayloadKind::kOpaque, -1, FdRule::kOne},         // 32
      {"GPU_SET_SOCKET", PayloadKind::kNone, 0, FdRule::kOne},             // 33
      {"RESET_DEVICE", PayloadKind::kNone, 0, FdRule::kNone},              // 34
      {"VRING_KICK", PayloadKind::kVringState, 8, FdRule::kNone},          // 35
      {"GET_MAX_MEM_SLOTS", PayloadKind::kNone, 0, FdRule::kNone},         // 36
      {"ADD_MEM_REG", PayloadKind::kOpaque, 40, FdRule::kOne},             // 37
      {"REM_MEM_REG", PayloadKind::kOpaque, 40, FdRule::kOptional},        // 38
      {"SET_STATUS", PayloadKind::kU64, 8, FdRule::kNone},                 // 39
      {"GET_STATUS", PayloadKind::kNone, 0, FdRule::kNone},                // 40
  };
  return request <= kLastKnownRequest ? kRules[request] : kUnknown;
}

uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

std::string Named(uint32_t request) {
  const char* n = RequestName(request);
  return n ? std::string(n) : "request " + std::to_string(request);
}

bool Refuse(std::string* why, std::string msg) {
  *why = std::move(msg);
  return false;
}

}  // namespace

const char* RequestName(uint32_t request) { return RuleOf(request).name; }

bool CheckHeader(const Header& h, Role role, std::string* why) {
  if ((h.flags & kVersionMask) != kVersion) {
    char b[96];
    snprintf(b, sizeof b, ": protocol version %u (flags 0x%x), only version 1 exists", h.flags & kVersionMask, h.flags);
    return Refuse(why, Named(h.request) + b);
  }
  if (h.flags & ~kKnownFlags) {
    char b[64];
    snprintf(b, sizeof b, ": unknown header flag bits 0x%x", h.flags & ~kKnownFlags);
    return Refuse(why, Named(h.request) + b);
  }
  const bool reply = (h.flags & kFlagReply) != 0;
  if (role == Role::kBackEnd && reply) return Refuse(why, Named(h.request) + ": the reply flag is set on a request");
  if (role == Role::kFrontEnd && !reply) return Refuse(why, Named(h.request) + ": a reply without the reply flag");
  if (h.size > kMaxPayload)
    return Refuse(why, Named(h.request) + ": payload size " + std::to_string(h.size) + " exceeds " +
                           std::to_string(kMaxPayload) + " bytes");
  return true;
}

bool DecodeRequest(Message* m, std::string* why) {
  const Rule& r = RuleOf(m->hdr.request);
  const std::string name = Named(m->hdr.request);
  if (!r.name) return Refuse(why, "unknown request " + std::to_string(m->hdr.request));
  const size_t size = m->payload.size();
  const size_t nfds = m->fds.size();
  if (r.size >= 0 && size != static_cast<size_t>(r.size))
    return Refuse(why, name + ": payload is " + std::to_string(size) + " bytes, must be " + std::to_string(r.size));
  m->kind = r.kind;
  const uint8_t* p = m->payload.data();
  switch (r.kind) {
    case PayloadKind::kNone:
    case PayloadKind::kOpaque:
      break;
    case PayloadKind::kU64:
      m->u64 = Load64(p);
      break;
    case PayloadKind::kVringState:
      m->state.index = Load32(p);
      m->state.num = Load32(p + 4);
      break;
    case PayloadKind::kVringAddr:
      m->addr.index = Load32(p);
      m->addr.flags = Load32(p + 4);
      m->addr.desc = Load64(p + 8);
      m->addr.used = Load64(p + 16);
      m->addr.avail = Load64(p + 24);
      m->addr.log = Load64(p + 32);
      break;
    case PayloadKind::kMemTable: {
      if (size < kMemTableHeaderSize)
        return Refuse(why, name + ": payload is " + std::to_string(size) + " bytes, shorter than the region count");
      const uint32_t n = Load32(p);
      if (n == 0 || n > kMaxMemRegions)
        return Refuse(why, name + ": " + std::to_string(n) + " regions, must be 1 to " + std::to_string(kMaxMemRegions));
      const size_t want = kMemTableHeaderSize + size_t{n} * kMemRegionSize;
      if (size != want)
        return Refuse(why, name + ": payload is " + std::to_string(size) + " bytes, " + std::to_string(n) +
                               " regions take " + std::to_string(want));
      m->regions.resize(n);
      for (uint32_t i = 0; i < n; i++) {
        const uint8_t* q = p + kMemTableHeaderSize + i * kMemRegionSize;
        m->regions[i] = MemRegion{Load64(q), Load64(q + 8), Load64(q + 16), Load64(q + 24)};
      }
      break;
    }
  }
  size_t want_fds = 0;
  bool optional = false;
  switch (r.fds) {
    case FdRule::kNone:
      break;
    case FdRule::kOne:
      want_fds = 1;
      break;
    case FdRule::kVring:
      if (m->u64 & ~(kVringIndexMask | kVringNoFd)) {
        char b[80];
        snprintf(b, sizeof b, ": u64 0x%llx has bits other than the index (0-7) and no-fd (8)",
                 static_cast<unsigned long long>(m->u64));
        return Refuse(why, name + b);
      }
      want_fds = (m->u64 & kVringNoFd) ? 0 : 1;
      break;
    case FdRule::kRegions:
      want_fds = m->regions.size();
      break;
    case FdRule::kOptional:
    case FdRule::kLogBase:
      want_fds = 1;
      optional = true;
      break;
  }
  if (nfds != want_fds && !(optional && nfds == 0))
    return Refuse(why, name + ": " + std::to_string(nfds) + " file descriptors, must be " +
                           (optional ? "0 or " : "") + std::to_string(want_fds));
  return true;
}

Reader::~Reader() { CloseFds(); }

void Reader::Reset() {
  in_payload_ = false;
  have_ = 0;
  msg_ = Message();
  tainted_ = false;
  taint_why_.clear();
}

void Reader::CloseFds() {
  for (int fd : msg_.fds) close(fd);
  msg_.fds.clear();
}

size_t Reader::Want() const { return in_payload_ ? msg_.hdr.size - have_ : kHeaderSize - have_; }

uint8_t* Reader::Buffer() { return in_payload_ ? msg_.payload.data() + have_ : header_ + have_; }

Reader::Result Reader::Got(size_t n, const int* fds, size_t nfds, bool ctrunc) {
  for (size_t i = 0; i < nfds; i++) {
    if (msg_.fds.size() < kMaxFds) {
      msg_.fds.push_back(fds[i]);
    } else {
      close(fds[i]);
      if (!tainted_) taint_why_ = "more than " + std::to_string(kMaxFds) + " file descriptors";
      tainted_ = true;
    }
  }
  if (ctrunc) {
    if (!tainted_) taint_why_ = "control data truncated: more than " + std::to_string(kMaxFds) + " file descriptors";
    tainted_ = true;
  }
  have_ += n;
  if (!in_payload_) {
    if (have_ < kHeaderSize) return Result::kNeedMore;
    memcpy(&msg_.hdr.request, header_, 4);
    memcpy(&msg_.hdr.flags, header_ + 4, 4);
    memcpy(&msg_.hdr.size, header_ + 8, 4);
    if (!CheckHeader(msg_.hdr, role_, &why_)) {
      refused_ = msg_.hdr;
      CloseFds();
      Reset();
      return Result::kFatal;
    }
    msg_.payload.resize(msg_.hdr.size);
    in_payload_ = true;
    have_ = 0;
    if (msg_.hdr.size > 0) return Result::kNeedMore;
  } else if (have_ < msg_.hdr.size) {
    return Result::kNeedMore;
  }
  // The whole message is in.
  std::string why;
  bool ok;
  if (tainted_) {
    ok = false;
    why = Named(msg_.hdr.request) + ": " + taint_why_;
  } else {
    ok = role_ == Role::kFrontEnd || DecodeRequest(&msg_, &why);
  }
  if (!ok) {
    why_ = std::move(why);
    refused_ = msg_.hdr;
    CloseFds();
    Reset();
    return Result::kRefused;
  }
  return Result::kMessage;
}

Message Reader::Take() {
  Message m = std::move(msg_);
  msg_ = Message();
  Reset();
  return m;
}

std::vector<uint8_t> EncodeRequest(uint32_t request, uint32_t flags, const void* payload, size_t len) {
  std::vector<uint8_t> out(kHeaderSize + len);
  const uint32_t f = flags;
  const uint32_t size = static_cast<uint32_t>(len);
  memcpy(out.data(), &request, 4);
  memcpy(out.data() + 4, &f, 4);
  memcpy(out.data() + 8, &size, 4);
  if (len) memcpy(out.data() + kHeaderSize, payload, len);
  return out;
}

std::vector<uint8_t> EncodeReply(uint32_t request, const void* payload, size_t len) {
  return EncodeRequest(request, kVersion | kFlagReply, payload, len);
}

std::vector<uint8_t> EncodeReplyU64(uint32_t request, uint64_t value) { return EncodeReply(request, &value, 8); }

std::vector<uint8_t> EncodeReplyState(uint32_t request, VringState s) {
  uint8_t b[kVringStateSize];
  memcpy(b, &s.index, 4);
  memcpy(b + 4, &s.num, 4);
  return EncodeReply(request, b, sizeof b);
}

}  // namespace vhost_user
}  // namespace vt
