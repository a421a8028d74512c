// Fuzz target for the vhost-user reader and request decoder (native/vhost_user.h):
// a byte stream cut into reads of varying size with fds attached at varying
// points; and, for the live-migration messages, the dirty log they set up
// (native/dirty_log.h): SET_LOG_BASE's size sizes a log, SET_VRING_ADDR's
// log_guest_addr (LOG flag) and SET_FEATURES' value (LOG_ALL) are marked in it,
// which must never write outside it. Checks what a hostile front end must never get: a crash, a read past
// a buffer (the sanitizers), an fd leaked (every fd handed in is closed by the
// reader or belongs to a message handed out), a message breaking the rules it
// was accepted under. Built two ways:
//   clang++ -fsanitize=fuzzer,address,undefined ...   libFuzzer drives it;
//   g++ -DVT_FUZZ_STANDALONE -fsanitize=address,undefined ...   a main() feeds it
//     mutated valid messages from a seeded generator for a bounded time
//     (test/vhost-user-fuzz.test.ts does this in every test run).
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>

#include "../../native/dirty_log.h"
#include "../../native/vhost_user.h"

namespace vu = vt::vhost_user;

namespace {

[[noreturn]] void Fail(const char* what) {
  fprintf(stderr, "vhost_user_fuzz: %s\n", what);
  abort();
}

bool IsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

// Outcomes seen, so a run shows it reached every path (accepted, refused, fatal).
uint64_t g_accepted = 0, g_refused = 0, g_fatal = 0, g_memtables = 0, g_log_marks = 0;

// The largest log this target allocates (a front end's mmap_size is capped to it; the
// rest of a bigger log would only be more of the same bytes).
constexpr uint64_t kMaxFuzzLog = 1 << 16;

uint64_t LoadU64(const std::vector<uint8_t>& p, size_t at) {
  uint64_t v = 0;
  if (p.size() >= at + 8) memcpy(&v, p.data() + at, 8);
  return v;
}

// A log sized by the last SET_LOG_BASE, in its own heap block so that ASan
// sees any byte marked past its end; then marks what the session would.
struct FuzzLog {
  std::vector<uint8_t>* bits = nullptr;
  std::unique_ptr<vt::DirtyLog> log;
  ~FuzzLog() { delete bits; }

  void Take(const vu::Message& m) {
    if (m.hdr.request == vu::kSetLogBase && m.payload.size() == 16) {
      const uint64_t size = std::min(LoadU64(m.payload, 0), kMaxFuzzLog);
      delete bits;
      bits = new std::vector<uint8_t>(size);
      log = size ? std::make_unique<vt::DirtyLog>(bits->data(), size, nullptr) : nullptr;
      return;
    }
    if (!log) return;
    if (m.hdr.request == vu::kSetVringAddr && m.kind == vu::PayloadKind::kVringAddr && (m.addr.flags & 1)) {
      // The used ring of the largest split ring, at the front end's log_guest_addr.
      log->Mark(m.addr.log, 6 + 8ull * 32768);
      g_log_marks++;
    } else if (m.kind == vu::PayloadKind::kU64 && (m.u64 >> 26 & 1)) {
      // Any u64 with LOG_ALL's bit: as a guest address and a length (a buffer anywhere).
      log->Mark(m.u64, m.u64 >> 40);
      log->Mark(m.u64 << 12, 65536);
      g_log_marks++;
    }
  }
};

// The rules an accepted message must meet, checked independently of the decoder.
void CheckAccepted(const vu::Message& m) {
  if ((m.hdr.flags & vu::kVersionMask) != vu::kVersion) Fail("accepted a message with a bad version");
  if (m.hdr.flags & vu::kFlagReply) Fail("accepted a reply as a request");
  if (m.payload.size() != m.hdr.size || m.hdr.size > vu::kMaxPayload) Fail("payload size differs from the header");
  if (m.fds.size() > vu::kMaxFds) Fail("more fds than a message may carry");
  if (!vu::RequestName(m.hdr.request)) Fail("accepted an unknown request");
  if (m.kind == vu::PayloadKind::kMemTable) {
    if (m.regions.empty() || m.regions.size() > vu::kMaxMemRegions) Fail("bad region count accepted");
    if (m.fds.size() != m.regions.size()) Fail("region and fd counts differ");
    if (m.payload.size() != vu::kMemTableHeaderSize + m.regions.size() * vu::kMemRegionSize) Fail("memory table size wrong");
  }
  if (m.hdr.request == vu::kSetLogBase) {
    if (m.payload.size() != 16) Fail("SET_LOG_BASE accepted without its 16-byte payload");
    if (m.fds.size() > 1) Fail("SET_LOG_BASE accepted with more than one fd");
  }
  if (m.hdr.request == vu::kSetVringKick || m.hdr.request == vu::kSetVringCall || m.hdr.request == vu::kSetVringErr) {
    if (m.u64 & ~(vu::kVringIndexMask | vu::kVringNoFd)) Fail("vring u64 with stray bits accepted");
    if (m.fds.size() != ((m.u64 & vu::kVringNoFd) ? 0u : 1u)) Fail("vring fd count wrong");
  }
}

// One stream: `data` is the bytes; `shape` decides read sizes and where fds come.
void RunStream(const uint8_t* data, size_t size, const uint8_t* shape, size_t shape_len) {
  const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0) Fail("cannot open /dev/null");
  std::vector<int> given;  // every fd handed to the reader
  std::vector<int> kept;   // fds of accepted messages (now ours)
  FuzzLog flog;
  {
    vu::Reader r(vu::Role::kBackEnd);
    size_t off = 0;
    size_t step = 0;
    while (off < size) {
      const uint8_t s = shape_len ? shape[step++ % shape_len] : 0xff;
      const size_t want = r.Want();
      if (want == 0) Fail("Want() is 0");
      const size_t n = std::min({want, size - off, static_cast<size_t>(s % 64) + 1});
      memcpy(r.Buffer(), data + off, n);
      off += n;
      int fds[vu::kMaxFds];
      const size_t nfds = (s >> 6) == 3 ? (s % 3) + 1 : (s >> 6) == 2 ? 1 : 0;
      for (size_t i = 0; i < nfds; i++) {
        fds[i] = dup(devnull);
        if (fds[i] < 0) Fail("dup failed");
        given.push_back(fds[i]);
      }
      const bool ctrunc = (s & 0x3f) == 0x3f;
      switch (r.Got(n, fds, nfds, ctrunc)) {
        case vu::Reader::Result::kNeedMore:
          break;
        case vu::Reader::Result::kMessage: {
          vu::Message m = r.Take();
          CheckAccepted(m);
          g_accepted++;
          if (m.kind == vu::PayloadKind::kMemTable) g_memtables++;
          flog.Take(m);
          kept.insert(kept.end(), m.fds.begin(), m.fds.end());
          break;
        }
        case vu::Reader::Result::kRefused:
          if (r.why().empty()) Fail("refused without a reason");
          g_refused++;
          break;
        case vu::Reader::Result::kFatal:
          if (r.why().empty()) Fail("fatal without a reason");
          g_fatal++;
          off = size;  // the connection would end here
          break;
      }
    }
  }  // the reader's destructor closes the fds of a message half read
  for (int fd : kept) {
    if (!IsOpen(fd)) Fail("an fd of an accepted message was closed under its owner");
    close(fd);
  }
  for (int fd : given)
    if (IsOpen(fd)) Fail("an fd handed to the reader leaked");
  close(devnull);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The first 16 bytes shape the reads; the rest is the stream.
  const size_t k = std::min<size_t>(16, size);
  RunStream(data + k, size - k, data, k);
  return 0;
}

#ifdef VT_FUZZ_STANDALONE
#include <chrono>
#include <random>

// Valid-looking messages, then mutated: the decoder's interesting paths need
// well-formed headers with slightly wrong payloads, which random bytes rarely make.
static std::vector<uint8_t> Generate(std::mt19937_64& rng) {
  std::vector<uint8_t> out;
  const int count = 1 + static_cast<int>(rng() % 6);
  for (int i = 0; i < count; i++) {
    uint32_t req = static_cast<uint32_t>(rng() % 8 == 0 ? rng() % 64 : 1 + rng() % vu::kLastKnownRequest);
    uint32_t flags = rng() % 16 == 0 ? static_cast<uint32_t>(rng()) : (vu::kVersion | (rng() % 2 ? vu::kFlagNeedReply : 0));
    std::vector<uint8_t> payload;
    switch (rng() % 5) {
      case 0: payload.resize(0); break;
      case 1: payload.resize(8); break;
      case 2: payload.resize(40); break;
      case 3: {
        uint32_t n = static_cast<uint32_t>(rng() % 10);
        payload.resize(vu::kMemTableHeaderSize + (rng() % 4 == 0 ? rng() % 300 : n * vu::kMemRegionSize));
        if (payload.size() >= 4) memcpy(payload.data(), &n, 4);
        break;
      }
      default: payload.resize(rng() % 300); break;
    }
    const bool shaped = req == vu::kSetLogBase || req == vu::kSetVringAddr || req == vu::kSetFeatures;
    for (size_t j = (req == vu::kSetMemTable ? 4 : 0); !shaped && j < payload.size(); j++) payload[j] = static_cast<uint8_t>(rng());
    if (rng() % 6 == 0) {  // live migration: SET_LOG_BASE, SET_VRING_ADDR with LOG, LOG_ALL
      switch (rng() % 3) {
        case 0: {
          req = vu::kSetLogBase;
          payload.assign(16, 0);
          const uint64_t size = rng() % 4 == 0 ? rng() : rng() % 4096, offset = rng() % 4 == 0 ? rng() : 0;
          memcpy(payload.data(), &size, 8);
          memcpy(payload.data() + 8, &offset, 8);
          break;
        }
        case 1: {
          req = vu::kSetVringAddr;
          payload.assign(40, 0);
          const uint32_t index = static_cast<uint32_t>(rng() % 4), aflags = rng() % 4 == 0 ? static_cast<uint32_t>(rng()) : 1;
          const uint64_t log = rng() % 2 ? rng() : (rng() % 512) << 12;
          memcpy(payload.data(), &index, 4);
          memcpy(payload.data() + 4, &aflags, 4);
          memcpy(payload.data() + 32, &log, 8);
          break;
        }
        default: {
          req = vu::kSetFeatures;
          payload.assign(8, 0);
          const uint64_t f = rng() | (1ull << 26);
          memcpy(payload.data(), &f, 8);
          break;
        }
      }
    }
    if (payload.size() == 8 && req != vu::kSetFeatures && rng() % 2) {  // a plausible vring u64
      uint64_t v = rng() % 4 == 0 ? rng() : (rng() % 256) | (rng() % 2 ? vu::kVringNoFd : 0);
      memcpy(payload.data(), &v, 8);
    }
    uint32_t sz = rng() % 32 == 0 ? static_cast<uint32_t>(rng() % 10000) : static_cast<uint32_t>(payload.size());
    std::vector<uint8_t> msg = vu::EncodeRequest(req, flags, payload.data(), payload.size());
    memcpy(msg.data() + 8, &sz, 4);
    out.insert(out.end(), msg.begin(), msg.end());
  }
  if (!out.empty() && rng() % 4 == 0) out.resize(rng() % out.size());  // cut the stream anywhere
  for (int flips = static_cast<int>(rng() % 3); flips > 0 && !out.empty(); flips--) out[rng() % out.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
  return out;
}

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? atof(argv[1]) : 5.0;
  const uint64_t seed = argc > 2 ? strtoull(argv[2], nullptr, 0) : 1;
  std::mt19937_64 rng(seed);
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t runs = 0;
  while (std::chrono::steady_clock::now() < end) {
    for (int i = 0; i < 256; i++, runs++) {
      std::vector<uint8_t> stream = Generate(rng);
      uint8_t shape[16];
      for (auto& b : shape) b = static_cast<uint8_t>(rng());
      RunStream(stream.data(), stream.size(), shape, sizeof shape);
    }
  }
  printf("vhost_user_fuzz: %llu streams (seed %llu): %llu messages accepted (%llu memory tables, %llu dirty-log marks), %llu refused, %llu fatal headers; no finding\n",
         static_cast<unsigned long long>(runs), static_cast<unsigned long long>(seed), static_cast<unsigned long long>(g_accepted),
         static_cast<unsigned long long>(g_memtables), static_cast<unsigned long long>(g_log_marks), static_cast<unsigned long long>(g_refused),
         static_cast<unsigned long long>(g_fatal));
  return 0;
}
#endif
