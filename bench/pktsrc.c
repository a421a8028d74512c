// pktsrc: the RX traffic source of the benchmark. Run inside the bench's
// namespace (ip netns exec), it injects pre-built frames into the kernel so
// that the kernel transmits them out of the TAP, i.e. makes them readable from
// the TAP fd by whichever consumer is under test (vhost-tap, the C read loop,
// the Node loop). One AF_PACKET socket bound to the TAP, sendmmsg batches,
// PACKET_QDISC_BYPASS (no qdisc work on the source side).
//
// A TAP has no backpressure: when its queue is full the kernel drops. A source
// that blasts would burn a whole core on a 2-core machine for frames that are
// dropped, stealing CPU from the consumer being measured. So by default the
// source paces itself (AIMD on the TAP's tx_dropped counter): it keeps a small
// drop rate, i.e. the TAP queue is almost always non-empty for the consumer,
// while spending little CPU on frames nobody reads. `blast` turns pacing off.
//
// Usage: pktsrc IFNAME FILE RECLEN NREC gso|plain pace|blast
//   FILE holds NREC records of RECLEN bytes: a 12-byte virtio_net_hdr then the
//   Ethernet frame. With `gso` the socket takes a virtio_net_hdr (its first 10
//   bytes, PACKET_VNET_HDR) so 64 KB TCP super-frames leave as GSO packets.
// Prints {"sent":N,"drops":N} on SIGTERM/SIGINT.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif
#ifndef PACKET_VNET_HDR
#define PACKET_VNET_HDR 15
#endif

#define BATCH 32
#define VNET_HDR_LEGACY 10
#define VNET_HDR_FILE 12

static volatile sig_atomic_t stop_flag;
static void on_signal(int s) { (void)s; stop_flag = 1; }

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

// tx_dropped of the TAP: `ip netns exec` mounts this namespace's sysfs.
static uint64_t read_drops(const char* path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  char buf[32];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  return strtoull(buf, NULL, 10);
}

int main(int argc, char** argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: pktsrc IFNAME FILE RECLEN NREC gso|plain pace|blast\n");
    return 2;
  }
  const char* ifname = argv[1];
  size_t reclen = strtoul(argv[3], NULL, 10);
  size_t nrec = strtoul(argv[4], NULL, 10);
  int gso = strcmp(argv[5], "gso") == 0;
  int pace = strcmp(argv[6], "pace") == 0;
  if (reclen <= VNET_HDR_FILE || nrec == 0) {
    fprintf(stderr, "pktsrc: bad record size/count\n");
    return 2;
  }
  FILE* f = fopen(argv[2], "rb");
  if (!f) {
    perror("pktsrc: open frames");
    return 1;
  }
  uint8_t* recs = malloc(reclen * nrec);
  if (!recs || fread(recs, reclen, nrec, f) != nrec) {
    fprintf(stderr, "pktsrc: short frames file\n");
    return 1;
  }
  fclose(f);

  int s = socket(AF_PACKET, SOCK_RAW, 0);  // protocol 0: send only, never receives
  if (s < 0) {
    perror("pktsrc: socket");
    return 1;
  }
  int one = 1;
  if (setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0) perror("pktsrc: PACKET_QDISC_BYPASS (continuing)");
  if (gso && setsockopt(s, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) {
    perror("pktsrc: PACKET_VNET_HDR");
    return 1;
  }
  int sndbuf = 8 << 20;
  setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_ifindex = (int)if_nametoindex(ifname);
  sll.sll_protocol = htons(ETH_P_ALL);
  if (sll.sll_ifindex == 0 || bind(s, (struct sockaddr*)&sll, sizeof sll) < 0) {
    perror("pktsrc: bind to TAP");
    return 1;
  }

  // Without gso the socket takes the bare frame; with it, the legacy 10-byte
  // header (the record's header minus num_buffers) and then the frame.
  struct iovec iov[BATCH][2];
  struct mmsghdr msgs[BATCH];
  memset(msgs, 0, sizeof msgs);

  char dpath[128];
  snprintf(dpath, sizeof dpath, "/sys/class/net/%s/statistics/tx_dropped", ifname);

  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);

  uint64_t sent = 0, drops0 = read_drops(dpath), rec = 0;
  double rate = 200000.0;  // frames/s; adapted below
  uint64_t t_start = now_ns(), t_check = t_start, sent_check = 0, drops_check = drops0;
  uint64_t budget_t = t_start;
  while (!stop_flag) {
    for (int i = 0; i < BATCH; i++) {
      uint8_t* r = recs + (rec % nrec) * reclen;
      rec++;
      iov[i][0].iov_base = r;
      iov[i][0].iov_len = VNET_HDR_LEGACY;
      iov[i][1].iov_base = r + VNET_HDR_FILE;
      iov[i][1].iov_len = reclen - VNET_HDR_FILE;
      msgs[i].msg_hdr.msg_iov = gso ? iov[i] : iov[i] + 1;
      msgs[i].msg_hdr.msg_iovlen = gso ? 2 : 1;
    }
    int n = sendmmsg(s, msgs, BATCH, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ENOBUFS || errno == EAGAIN) continue;
      // The consumer closed the TAP (the C loop exits on its own clock): the trial is over.
      if (errno == ENETDOWN || errno == ENODEV || errno == ENXIO) break;
      perror("pktsrc: sendmmsg");
      return 1;
    }
    sent += (uint64_t)n;
    if (!pace) continue;
    uint64_t t = now_ns();
    if (t - t_check >= 2000000) {
      // AIMD-like: back off while more than ~2% of what we send is dropped, else speed up.
      uint64_t d = read_drops(dpath);
      uint64_t ds = sent - sent_check, dd = d - drops_check;
      if (dd * 50 > ds) rate *= 0.9;
      else rate *= 1.04;
      if (rate < 5000) rate = 5000;
      t_check = t;
      sent_check = sent;
      drops_check = d;
    }
    budget_t += (uint64_t)(1e9 * n / rate);
    if (budget_t > t) {
      uint64_t wait = budget_t - t;
      if (wait > 20000000) wait = 20000000;
      struct timespec ts = {(time_t)(wait / 1000000000ull), (long)(wait % 1000000000ull)};
      nanosleep(&ts, NULL);
    } else if (t - budget_t > 5000000) {
      budget_t = t;  // do not bank more than 5 ms of credit
    }
  }
  printf("{\"sent\":%llu,\"drops\":%llu}\n", (unsigned long long)sent, (unsigned long long)(read_drops(dpath) - drops0));
  return 0;
}
