// Per-frame cost of RSS steering (native/rss_steering.cc): the kernel runs the
// steering program for every frame it hands the TAP, in the sender's context
// (so the device's own CPU figures never show it). BPF_PROG_TEST_RUN times the
// program in the kernel over many repeats, next to a program that only returns
// a constant (what tun's steering costs with nothing to compute), and checks
// that the queue it picks is the one rss_hash.h's hash names. Needs CAP_BPF
// (root); no TAP, no traffic:
// `g++ -O2 -std=c++17 -I native bench/micro/rss_steering.cc native/rss_steering.cc -o /tmp/rss_steering && /tmp/rss_steering`.
#include <linux/bpf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "rss_hash.h"
#include "rss_steering.h"

namespace {

const uint8_t kKey[40] = {0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
                          0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
                          0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa};
// Repeats per BPF_PROG_TEST_RUN: the kernel reports the mean time per run.
constexpr uint32_t kRepeat = 1000000;

// Frames as the RX 64 B bench sends (IPv4/UDP) and the longest hash input (IPv6/TCP).
std::vector<uint8_t> Frame(bool v6, uint32_t flow) {
  std::vector<uint8_t> f(v6 ? 86 : 64, 0);
  f[12] = v6 ? 0x86 : 0x08;
  f[13] = v6 ? 0xdd : 0x00;
  uint8_t* ip = f.data() + 14;
  if (v6) {
    ip[0] = 0x60;
    ip[5] = 32;
    ip[6] = 6;
    std::memcpy(ip + 8 + 12, &flow, 4);
    std::memcpy(ip + 40, &flow, 4);
  } else {
    ip[0] = 0x45;
    ip[3] = 50;
    ip[9] = 17;
    std::memcpy(ip + 12, &flow, 4);
    std::memcpy(ip + 20, &flow, 4);
  }
  return f;
}

long Bpf(int cmd, bpf_attr* a) { return syscall(SYS_bpf, cmd, a, sizeof *a); }

// Mean ns per run, and the program's return value, for `frame`. A socket
// filter's test run starts the skb after its Ethernet header, where tun's
// steering starts at the Ethernet header: a dummy header goes in front, so the
// program sees the frame as tun would hand it over.
bool TestRun(int prog, const std::vector<uint8_t>& frame, double* ns, uint32_t* ret) {
  std::vector<uint8_t> in(14, 0);
  in[12] = frame[12];
  in[13] = frame[13];
  in.insert(in.end(), frame.begin(), frame.end());
  bpf_attr a;
  std::memset(&a, 0, sizeof a);
  a.test.prog_fd = static_cast<uint32_t>(prog);
  a.test.data_in = reinterpret_cast<uintptr_t>(in.data());
  a.test.data_size_in = static_cast<uint32_t>(in.size());
  a.test.repeat = kRepeat;
  if (Bpf(BPF_PROG_TEST_RUN, &a) < 0) {
    std::printf("BPF_PROG_TEST_RUN: %s\n", std::strerror(errno));
    return false;
  }
  *ns = a.test.duration;
  *ret = a.test.retval;
  return true;
}

int ConstantProgram() {
  bpf_insn p[2];
  std::memset(p, 0, sizeof p);
  p[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
  p[0].imm = 1;
  p[1].code = BPF_JMP | BPF_EXIT;
  bpf_attr a;
  std::memset(&a, 0, sizeof a);
  a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
  a.insn_cnt = 2;
  a.insns = reinterpret_cast<uintptr_t>(p);
  a.license = reinterpret_cast<uintptr_t>("Dual MIT/GPL");
  return static_cast<int>(Bpf(BPF_PROG_LOAD, &a));
}

}  // namespace

int main() {
  vt::RssSteeringConfig c;
  c.hash_types = 0x3f;
  std::memcpy(c.key, kKey, sizeof kKey);
  c.key_len = sizeof kKey;
  for (int i = 0; i < 128; i++) c.table.push_back(static_cast<uint16_t>(i % 2));
  const size_t insns = vt::RssSteeringProgram(c, 0).size();
  int prog = -1;
  std::string why;
  const vt::SysResult r = vt::RssSteeringLoad(c, &prog, &why);
  if (!r.ok()) {
    std::printf("the steering program did not load: %s: %s %s\n", r.syscall, std::strerror(r.err), why.c_str());
    return 1;
  }
  const int empty = ConstantProgram();
  if (empty < 0) {
    std::printf("the constant program did not load: %s\n", std::strerror(errno));
    return 1;
  }
  std::printf("RSS steering program: %zu instructions\n", insns);
  const vt::RssHash h(c.hash_types, kKey, sizeof kKey);
  for (bool v6 : {false, true}) {
    double sum = 0, base = 0;
    int n = 0, wrong = 0;
    for (uint32_t flow = 1; flow <= 16; flow++) {
      const std::vector<uint8_t> f = Frame(v6, flow * 2654435761u);
      double ns, ns0;
      uint32_t q, q0;
      if (!TestRun(prog, f, &ns, &q) || !TestRun(empty, f, &ns0, &q0)) return 1;
      uint32_t value;
      const uint16_t report = h.Compute(f.data(), f.size(), &value);
      const uint32_t want = report == vt::HASH_REPORT_NONE ? c.unclassified : c.table[value & 127];
      if (q != want) wrong++;
      sum += ns;
      base += ns0;
      n++;
    }
    std::printf("%s: %.1f ns per frame (a constant-returning program: %.1f ns); queues as rss_hash.h names: %d of %d\n",
                v6 ? "IPv6/TCP 86 B" : "IPv4/UDP 64 B", sum / n, base / n, n - wrong, n);
  }
  close(prog);
  close(empty);
}
