// RSS steering: builds and loads the tun steering program for the guest's
// RSS configuration (see rss_steering.h for what it does and why this way).
#include "rss_steering.h"

#include <linux/bpf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

#include "rss_hash.h"

namespace vt {

namespace {

const char* const kStepSteering = "loading the RSS steering program";

// How often a load is tried when the verifier answers EAGAIN: it gives up so
// when a signal is pending (Node gets SIGCHLD whenever a child ends).
constexpr int kBpfLoadAttempts = 5;
// Verifier log kept when a load is refused, to say why (its last line).
constexpr size_t kVerifierLogBytes = 64 * 1024;

// Map value layout: Toeplitz tables, [kMaxInput][256] le32, then the
// indirection table as le32 queue numbers. A load's offset field is 16-bit
// signed, so the tables are reached from two base registers, the second
// kSplit input positions in (its reach covers the indirection table too).
constexpr size_t kTableBytes = RssHash::kMaxInput * 256 * 4;
constexpr int kSplit = 18;
constexpr int kSplitBytes = kSplit * 1024;

// Stack slots (offsets from r10) the packet bytes are copied to.
constexpr int16_t kSlotEth = -8;     // ethertype, 2 bytes
constexpr int16_t kSlotPorts = -16;  // source and destination port, 4 bytes
constexpr int16_t kSlotExt = -24;    // an IPv6 extension header's first 8 bytes
constexpr int16_t kSlotIp = -64;     // the IPv4 (20) or IPv6 (40) fixed header

constexpr int32_t kEthHdr = 14;
// Extension headers walked, as rss_hash.h walks them.
constexpr int kMaxExt = RssHash::kMaxExtHeaders;

// Registers: r6 the skb, r7 the bytes after the Ethernet header rss_hash.h
// looks at (min(len, kPeek) - 14); while parsing r8 the next-header value and
// r9 an offset into the IP packet; while hashing r7 and r9 the table bases and
// r8 the hash.
enum Reg : uint8_t { R0 = 0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 };

class Emitter {
 public:
  struct Label {
    int at = -1;
    std::vector<size_t> uses;
  };

  void Raw(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    bpf_insn i;
    std::memset(&i, 0, sizeof i);
    i.code = code;
    i.dst_reg = dst & 0xf;
    i.src_reg = src & 0xf;
    i.off = off;
    i.imm = imm;
    p_.push_back(i);
  }
  void MovImm(uint8_t d, int32_t imm) { Raw(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, imm); }
  void MovReg(uint8_t d, uint8_t s) { Raw(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0); }
  void AluImm(uint8_t op, uint8_t d, int32_t imm) { Raw(BPF_ALU64 | op | BPF_K, d, 0, 0, imm); }
  void AluReg(uint8_t op, uint8_t d, uint8_t s) { Raw(BPF_ALU64 | op | BPF_X, d, s, 0, 0); }
  void LdxB(uint8_t d, uint8_t s, int16_t off) { Raw(BPF_LDX | BPF_MEM | BPF_B, d, s, off, 0); }
  void LdxW(uint8_t d, uint8_t s, int16_t off) { Raw(BPF_LDX | BPF_MEM | BPF_W, d, s, off, 0); }
  void Call(int32_t helper) { Raw(BPF_JMP | BPF_CALL, 0, 0, 0, helper); }
  void Exit() { Raw(BPF_JMP | BPF_EXIT, 0, 0, 0, 0); }
  // r<d> = address of byte `offset` of map `map_fd`'s value 0 (an array map).
  void MapValue(uint8_t d, int map_fd, int32_t offset) {
    Raw(BPF_LD | BPF_IMM | BPF_DW, d, BPF_PSEUDO_MAP_VALUE, 0, map_fd);
    Raw(0, 0, 0, 0, offset);
  }
  void JmpImm(uint8_t op, uint8_t d, int32_t imm, Label* l) { Use(l), Raw(BPF_JMP | op | BPF_K, d, 0, 0, imm); }
  void JmpReg(uint8_t op, uint8_t d, uint8_t s, Label* l) { Use(l), Raw(BPF_JMP | op | BPF_X, d, s, 0, 0); }
  void Goto(Label* l) { Use(l), Raw(BPF_JMP | BPF_JA, 0, 0, 0, 0); }
  void Bind(Label* l) { l->at = static_cast<int>(p_.size()); }

  // Jumps are relative to the next instruction; every label is bound by now.
  std::vector<uint64_t> Finish(std::vector<Label*> labels) {
    for (Label* l : labels)
      for (size_t u : l->uses) p_[u].off = static_cast<int16_t>(l->at - static_cast<int>(u) - 1);
    std::vector<uint64_t> out(p_.size());
    std::memcpy(out.data(), p_.data(), p_.size() * sizeof(bpf_insn));
    return out;
  }

 private:
  void Use(Label* l) { l->uses.push_back(p_.size()); }
  std::vector<bpf_insn> p_;
};

// bpf_skb_load_bytes(skb, r2 (already set), r10 + slot, len); any failure
// (cannot happen within r7's bytes) leaves the frame unclassified.
void LoadBytes(Emitter& e, int16_t slot, int32_t len, Emitter::Label* fail) {
  e.MovReg(R1, R6);
  e.MovReg(R3, R10);
  e.AluImm(BPF_ADD, R3, slot);
  e.MovImm(R4, len);
  e.Call(BPF_FUNC_skb_load_bytes);
  e.JmpImm(BPF_JNE, R0, 0, fail);
}

// r8 ^= the Toeplitz contribution of `n` input bytes at stack slot `slot`,
// the first at input position `pos`.
void HashBytes(Emitter& e, int16_t slot, int pos, int n) {
  for (int i = 0; i < n; i++, pos++) {
    e.LdxB(R1, R10, static_cast<int16_t>(slot + i));
    e.AluImm(BPF_LSH, R1, 2);
    e.AluReg(BPF_ADD, R1, pos < kSplit ? R7 : R9);
    e.LdxW(R1, R1, static_cast<int16_t>((pos % kSplit) * 1024));
    e.AluReg(BPF_XOR, R8, R1);
  }
}

void HashStart(Emitter& e, int map_fd) {
  e.MapValue(R7, map_fd, 0);
  e.MapValue(R9, map_fd, kSplitBytes);
  e.MovImm(R8, 0);
}

}  // namespace

bool RssSteeringCheck(const RssSteeringConfig& c, std::string* why) {
  const size_t n = c.table.size();
  if (n == 0 || n > kRssSteeringMaxTable || (n & (n - 1)) != 0) {
    *why = "indirection table length " + std::to_string(n) + " is not a power of two up to " +
           std::to_string(kRssSteeringMaxTable);
    return false;
  }
  if (c.key_len > sizeof c.key) {
    *why = "key of " + std::to_string(c.key_len) + " bytes is over " + std::to_string(sizeof c.key);
    return false;
  }
  return true;
}

std::vector<uint8_t> RssSteeringMapValue(const RssSteeringConfig& c) {
  const RssHash h(c.hash_types, c.key, c.key_len);
  std::vector<uint8_t> v(kTableBytes + 4 * c.table.size());
  for (size_t p = 0; p < RssHash::kMaxInput; p++)
    for (int b = 0; b < 256; b++) {
      const uint32_t w = h.Lookup(p, static_cast<uint8_t>(b));
      std::memcpy(&v[(p * 256 + b) * 4], &w, 4);  // the program loads it in host order
    }
  for (size_t i = 0; i < c.table.size(); i++) {
    const uint32_t q = c.table[i];
    std::memcpy(&v[kTableBytes + 4 * i], &q, 4);
  }
  return v;
}

std::vector<uint64_t> RssSteeringProgram(const RssSteeringConfig& c, int map_fd) {
  const uint32_t t = c.hash_types;
  const bool v4 = t & (HASH_TYPE_IPv4 | HASH_TYPE_TCPv4 | HASH_TYPE_UDPv4);
  const bool v4l4 = t & (HASH_TYPE_TCPv4 | HASH_TYPE_UDPv4);
  const bool v6 = t & (HASH_TYPE_IPv6 | HASH_TYPE_TCPv6 | HASH_TYPE_UDPv6);
  const bool v6l4 = t & (HASH_TYPE_TCPv6 | HASH_TYPE_UDPv6);
  Emitter e;
  if (!v4 && !v6) {
    // Nothing is hashed: every frame is unclassified.
    e.MovImm(R0, c.unclassified);
    e.Exit();
    return e.Finish({});
  }
  Emitter::Label unclassified, table, l4v4, ipv4, l4v6, ipv6, v4start, v6start, v6l4check;
  std::vector<Emitter::Label> ext(kMaxExt), frag(kMaxExt), next(kMaxExt);

  e.MovReg(R6, R1);
  e.LdxW(R7, R6, offsetof(__sk_buff, len));
  e.JmpImm(BPF_JLT, R7, kEthHdr, &unclassified);
  Emitter::Label peek;
  e.JmpImm(BPF_JLE, R7, RssHash::kPeek, &peek);
  e.MovImm(R7, RssHash::kPeek);
  e.Bind(&peek);
  e.AluImm(BPF_SUB, R7, kEthHdr);
  // A VLAN tag the kernel holds aside reaches the guest in the frame (tun puts
  // it back), where rss_hash.h sees ethertype 0x8100 and hashes nothing.
  e.LdxW(R0, R6, offsetof(__sk_buff, vlan_present));
  e.JmpImm(BPF_JNE, R0, 0, &unclassified);
  e.MovImm(R2, 12);
  LoadBytes(e, kSlotEth, 2, &unclassified);
  e.LdxB(R1, R10, kSlotEth);
  e.AluImm(BPF_LSH, R1, 8);
  e.LdxB(R2, R10, kSlotEth + 1);
  e.AluReg(BPF_OR, R1, R2);
  if (v4) e.JmpImm(BPF_JEQ, R1, 0x0800, &v4start);
  if (v6) e.JmpImm(BPF_JEQ, R1, 0x86dd, &v6start);
  e.Goto(&unclassified);

  if (v4) {
    e.Bind(&v4start);
    e.JmpImm(BPF_JLT, R7, 20, &unclassified);
    e.MovImm(R2, kEthHdr);
    LoadBytes(e, kSlotIp, 20, &unclassified);
    e.LdxB(R1, R10, kSlotIp);
    e.MovReg(R2, R1);
    e.AluImm(BPF_RSH, R2, 4);
    e.JmpImm(BPF_JNE, R2, 4, &unclassified);
    e.AluImm(BPF_AND, R1, 0xf);
    e.AluImm(BPF_LSH, R1, 2);  // IHL in bytes
    e.JmpImm(BPF_JLT, R1, 20, &unclassified);
    e.JmpReg(BPF_JGT, R1, R7, &unclassified);
    if (v4l4) {
      e.MovReg(R9, R1);
      // A fragment (more to come, or not the first) has no ports to hash.
      e.LdxB(R2, R10, kSlotIp + 6);
      e.AluImm(BPF_LSH, R2, 8);
      e.LdxB(R3, R10, kSlotIp + 7);
      e.AluReg(BPF_OR, R2, R3);
      e.AluImm(BPF_AND, R2, 0x3fff);
      e.JmpImm(BPF_JNE, R2, 0, &ipv4);
      e.MovReg(R2, R9);
      e.AluImm(BPF_ADD, R2, 4);
      e.JmpReg(BPF_JGT, R2, R7, &ipv4);
      e.LdxB(R8, R10, kSlotIp + 9);
      if (t & HASH_TYPE_TCPv4) e.JmpImm(BPF_JEQ, R8, 6, &l4v4);
      if (t & HASH_TYPE_UDPv4) e.JmpImm(BPF_JEQ, R8, 17, &l4v4);
    }
    e.Goto(&ipv4);
    if (v4l4) {
      e.Bind(&l4v4);
      e.MovReg(R2, R9);
      e.AluImm(BPF_ADD, R2, kEthHdr);
      LoadBytes(e, kSlotPorts, 4, &unclassified);
      HashStart(e, map_fd);
      HashBytes(e, kSlotIp + 12, 0, 8);
      HashBytes(e, kSlotPorts, 8, 4);
      e.Goto(&table);
    }
    e.Bind(&ipv4);
    if (t & HASH_TYPE_IPv4) {
      HashStart(e, map_fd);
      HashBytes(e, kSlotIp + 12, 0, 8);
      e.Goto(&table);
    } else {
      e.Goto(&unclassified);
    }
  }

  if (v6) {
    e.Bind(&v6start);
    e.JmpImm(BPF_JLT, R7, 40, &unclassified);
    e.MovImm(R2, kEthHdr);
    LoadBytes(e, kSlotIp, 40, &unclassified);
    e.LdxB(R1, R10, kSlotIp);
    e.AluImm(BPF_RSH, R1, 4);
    e.JmpImm(BPF_JNE, R1, 6, &unclassified);
    if (v6l4) {
      e.LdxB(R8, R10, kSlotIp + 6);
      e.MovImm(R9, 40);
      for (int i = 0; i < kMaxExt; i++) {
        e.JmpImm(BPF_JEQ, R8, 0, &ext[i]);   // hop-by-hop options
        e.JmpImm(BPF_JEQ, R8, 43, &ext[i]);  // routing
        e.JmpImm(BPF_JEQ, R8, 60, &ext[i]);  // destination options
        e.JmpImm(BPF_JEQ, R8, 44, &frag[i]);
        e.Goto(&v6l4check);
        e.Bind(&ext[i]);
        e.MovReg(R2, R9);
        e.AluImm(BPF_ADD, R2, 8);
        e.JmpReg(BPF_JGT, R2, R7, &ipv6);
        e.MovReg(R2, R9);
        e.AluImm(BPF_ADD, R2, kEthHdr);
        LoadBytes(e, kSlotExt, 8, &unclassified);
        e.LdxB(R8, R10, kSlotExt);
        e.LdxB(R1, R10, kSlotExt + 1);
        e.AluImm(BPF_ADD, R1, 1);
        e.AluImm(BPF_LSH, R1, 3);
        e.AluReg(BPF_ADD, R9, R1);
        e.Goto(&next[i]);
        e.Bind(&frag[i]);
        e.MovReg(R2, R9);
        e.AluImm(BPF_ADD, R2, 8);
        e.JmpReg(BPF_JGT, R2, R7, &ipv6);
        e.MovReg(R2, R9);
        e.AluImm(BPF_ADD, R2, kEthHdr);
        LoadBytes(e, kSlotExt, 8, &unclassified);
        // Only an unfragmented packet (offset 0, no more to come) has ports.
        e.LdxB(R1, R10, kSlotExt + 2);
        e.AluImm(BPF_LSH, R1, 8);
        e.LdxB(R2, R10, kSlotExt + 3);
        e.AluReg(BPF_OR, R1, R2);
        e.AluImm(BPF_AND, R1, 0xfff9);
        e.JmpImm(BPF_JNE, R1, 0, &ipv6);
        e.LdxB(R8, R10, kSlotExt);
        e.AluImm(BPF_ADD, R9, 8);
        e.Bind(&next[i]);
      }
      // Still an extension header after the walk: no transport header found.
      for (int nh : {0, 43, 60, 44}) e.JmpImm(BPF_JEQ, R8, nh, &ipv6);
      e.Bind(&v6l4check);
      e.MovReg(R2, R9);
      e.AluImm(BPF_ADD, R2, 4);
      e.JmpReg(BPF_JGT, R2, R7, &ipv6);
      if (t & HASH_TYPE_TCPv6) e.JmpImm(BPF_JEQ, R8, 6, &l4v6);
      if (t & HASH_TYPE_UDPv6) e.JmpImm(BPF_JEQ, R8, 17, &l4v6);
    }
    e.Goto(&ipv6);
    if (v6l4) {
      e.Bind(&l4v6);
      e.MovReg(R2, R9);
      e.AluImm(BPF_ADD, R2, kEthHdr);
      LoadBytes(e, kSlotPorts, 4, &unclassified);
      HashStart(e, map_fd);
      HashBytes(e, kSlotIp + 8, 0, 32);
      HashBytes(e, kSlotPorts, 32, 4);
      e.Goto(&table);
    }
    e.Bind(&ipv6);
    if (t & HASH_TYPE_IPv6) {
      HashStart(e, map_fd);
      HashBytes(e, kSlotIp + 8, 0, 32);
      e.Goto(&table);
    } else {
      e.Goto(&unclassified);
    }
  }

  // The queue: indirection_table[hash & mask]. tun takes it modulo the
  // queues attached, which are the pairs running (every entry is below max_tx_vq).
  e.Bind(&table);
  e.AluImm(BPF_AND, R8, static_cast<int32_t>(c.table.size() - 1));
  e.AluImm(BPF_LSH, R8, 2);
  e.AluReg(BPF_ADD, R8, R9);
  e.LdxW(R0, R8, static_cast<int16_t>(kTableBytes - kSplitBytes));
  e.Exit();
  e.Bind(&unclassified);
  e.MovImm(R0, c.unclassified);
  e.Exit();

  std::vector<Emitter::Label*> labels{&unclassified, &table, &l4v4, &ipv4, &l4v6, &ipv6, &v4start, &v6start, &v6l4check, &peek};
  for (int i = 0; i < kMaxExt; i++) {
    labels.push_back(&ext[i]);
    labels.push_back(&frag[i]);
    labels.push_back(&next[i]);
  }
  // Labels of parts not emitted for these hash types have no uses.
  for (Emitter::Label* l : labels)
    if (l->at < 0) l->uses.clear();
  return e.Finish(labels);
}

namespace {

long Bpf(int cmd, bpf_attr* attr) { return ::syscall(SYS_bpf, cmd, attr, sizeof *attr); }

SysResult Failed(const char* call, int err) { return SysResult{err != 0 ? err : EIO, call, kStepSteering}; }

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

SysResult RssSteeringLoad(const RssSteeringConfig& c, int* prog_fd, std::string* verifier) {
  *prog_fd = -1;
  std::string why;
  if (!RssSteeringCheck(c, &why)) return Failed("bpf(BPF_PROG_LOAD)", EINVAL);
  const std::vector<uint8_t> value = RssSteeringMapValue(c);

  bpf_attr a;
  std::memset(&a, 0, sizeof a);
  a.map_type = BPF_MAP_TYPE_ARRAY;
  a.key_size = 4;
  a.value_size = static_cast<uint32_t>(value.size());
  a.max_entries = 1;
  std::strncpy(a.map_name, "vt_rss", sizeof a.map_name - 1);
  const Fd map(static_cast<int>(Bpf(BPF_MAP_CREATE, &a)));
  if (map.get() < 0) return Failed("bpf(BPF_MAP_CREATE)", errno);

  const uint32_t key = 0;
  std::memset(&a, 0, sizeof a);
  a.map_fd = static_cast<uint32_t>(map.get());
  a.key = reinterpret_cast<uintptr_t>(&key);
  a.value = reinterpret_cast<uintptr_t>(value.data());
  a.flags = BPF_ANY;
  if (Bpf(BPF_MAP_UPDATE_ELEM, &a) < 0) return Failed("bpf(BPF_MAP_UPDATE_ELEM)", errno);

  const std::vector<uint64_t> insns = RssSteeringProgram(c, map.get());
  auto load = [&](char* log, size_t log_size) {
    std::memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    a.insn_cnt = static_cast<uint32_t>(insns.size());
    a.insns = reinterpret_cast<uintptr_t>(insns.data());
    a.license = reinterpret_cast<uintptr_t>("Dual MIT/GPL");
    std::strncpy(a.prog_name, "vt_rss", sizeof a.prog_name - 1);
    if (log) {
      a.log_level = 1;
      a.log_buf = reinterpret_cast<uintptr_t>(log);
      a.log_size = static_cast<uint32_t>(log_size);
    }
    int fd = -1;
    for (int attempt = 0; attempt < kBpfLoadAttempts; attempt++) {
      fd = static_cast<int>(Bpf(BPF_PROG_LOAD, &a));
      if (fd >= 0 || errno != EAGAIN) break;
    }
    return fd;
  };
  int fd = load(nullptr, 0);
  if (fd < 0) {
    const int err = errno;
    if (err == EACCES || err == EINVAL) {
      // Once more with the log, only to say why: the last line names the rule.
      std::vector<char> log(kVerifierLogBytes, 0);
      const int again = load(log.data(), log.size());
      if (again >= 0) {
        fd = again;
      } else {
        std::string s(log.data());
        while (!s.empty() && s.back() == '\n') s.pop_back();
        const size_t nl = s.rfind('\n');
        *verifier = nl == std::string::npos ? s : s.substr(nl + 1);
      }
    }
    if (fd < 0) return Failed("bpf(BPF_PROG_LOAD)", err);
  }
  *prog_fd = fd;
  return SysResult{};
}

}  // namespace vt
