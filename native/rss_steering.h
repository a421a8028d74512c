// RSS steering (virtio 1.2 §5.1.6.5.7): the guest's RSS configuration
// compiled into a tun steering program (TUNSETSTEERINGEBPF), so the kernel
// puts each frame on the TAP queue the guest's indirection table names for
// its Toeplitz hash. The program is eBPF written here instruction by
// instruction (no libbpf, no compiler); it classifies frames exactly as
// rss_hash.h does (the hash report must name the same hash that chose the
// queue) and hashes with one table lookup per input byte, the tables and the
// indirection table living in one array map.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "status.h"

namespace vt {

struct RssSteeringConfig {
  uint32_t hash_types = 0;
  uint8_t key[40] = {};
  size_t key_len = 0;
  std::vector<uint16_t> table;  // power-of-two length, at most kMaxTable
  uint16_t unclassified = 0;
};

constexpr size_t kRssSteeringMaxTable = 128;

// Checks what the program relies on (table length, key length). false + why
// for a configuration backend/rss.ts would have refused.
bool RssSteeringCheck(const RssSteeringConfig& c, std::string* why);

// The program's instructions (struct bpf_insn, 8 bytes each) for map fd
// `map_fd`, and the map value that goes with them; for tests and the fuzzer,
// which check the layout without loading anything.
std::vector<uint64_t> RssSteeringProgram(const RssSteeringConfig& c, int map_fd);
std::vector<uint8_t> RssSteeringMapValue(const RssSteeringConfig& c);

// Creates the map, fills it, loads the program (BPF_PROG_TYPE_SOCKET_FILTER)
// and closes the map (the program keeps it). *prog_fd is the program's fd on
// success; on failure `verifier` gets the last line of the verifier's log
// when the kernel gave one (EACCES/EINVAL), and the SysResult names the call.
SysResult RssSteeringLoad(const RssSteeringConfig& c, int* prog_fd, std::string* verifier);

}  // namespace vt
