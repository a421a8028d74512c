// baseline: the syscall ceiling the benchmark compares vhost-tap against.
// Opens the bench's TAP itself (one queue per thread, IFF_VNET_HDR with the
// same 12-byte header vhost-tap's guest negotiates) and does one plain
// write() or read() per frame, no virtqueue at all. Run inside the bench's
// namespace (ip netns exec) so the TAP lives there.
//
// Usage: baseline tx|rx IFNAME FILE RECLEN NREC QUEUES WARMUP_MS DURATION_MS OFFLOADS TXQLEN
//   FILE: NREC records of RECLEN bytes (virtio_net_hdr + frame) to write (tx).
//   OFFLOADS: TUNSETOFFLOAD flags (what the reader accepts, e.g. CSUM|TSO4 for GSO RX).
// Prints "ready" once the TAP is up, then after warm-up and the measured window
// one JSON line: frames, bytes (frame bytes, header excluded), cpuNs of the I/O
// threads, wallNs of the window.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXQ 16
#define HDR 12
#define RXBUF (HDR + 14 + 65535 + 64)

struct worker {
  int fd;
  pthread_t th;
  _Atomic uint64_t frames;
  _Atomic uint64_t bytes;
  char pad[64];
};

static struct worker W[MAXQ];
static uint8_t* recs;
static size_t reclen, nrec;
static int is_tx;

static uint64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t thread_cpu_ns(pthread_t th) {
  clockid_t c;
  struct timespec t;
  if (pthread_getcpuclockid(th, &c) != 0 || clock_gettime(c, &t) != 0) return 0;
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void* run_tx(void* arg) {
  struct worker* w = arg;
  for (uint64_t i = 0;; i++) {
    const uint8_t* r = recs + (i % nrec) * reclen;
    ssize_t n = write(w->fd, r, reclen);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      perror("baseline: write");
      exit(1);
    }
    atomic_fetch_add_explicit(&w->frames, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->bytes, reclen - HDR, memory_order_relaxed);
  }
  return NULL;
}

static void* run_rx(void* arg) {
  struct worker* w = arg;
  uint8_t* buf = malloc(RXBUF);
  for (;;) {
    ssize_t n = read(w->fd, buf, RXBUF);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      perror("baseline: read");
      exit(1);
    }
    if (n <= HDR) continue;
    atomic_fetch_add_explicit(&w->frames, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->bytes, (uint64_t)n - HDR, memory_order_relaxed);
  }
  return NULL;
}

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) < 0 && errno == EINTR) {
  }
}

static void die(const char* what) {
  perror(what);
  exit(1);
}

int main(int argc, char** argv) {
  if (argc != 11) {
    fprintf(stderr, "usage: baseline tx|rx IFNAME FILE RECLEN NREC QUEUES WARMUP_MS DURATION_MS OFFLOADS TXQLEN\n");
    return 2;
  }
  is_tx = strcmp(argv[1], "tx") == 0;
  const char* ifname = argv[2];
  reclen = strtoul(argv[4], NULL, 10);
  nrec = strtoul(argv[5], NULL, 10);
  int queues = atoi(argv[6]);
  long warm = atol(argv[7]), dur = atol(argv[8]);
  unsigned long offloads = strtoul(argv[9], NULL, 0);
  int txqlen = atoi(argv[10]);
  if (queues < 1 || queues > MAXQ || reclen <= HDR || nrec == 0) {
    fprintf(stderr, "baseline: bad arguments\n");
    return 2;
  }
  if (is_tx) {
    FILE* f = fopen(argv[3], "rb");
    recs = malloc(reclen * nrec);
    if (!f || !recs || fread(recs, reclen, nrec, f) != nrec) {
      fprintf(stderr, "baseline: cannot read frames file %s\n", argv[3]);
      return 1;
    }
    fclose(f);
  }

  for (int q = 0; q < queues; q++) {
    // Blocking fd: one syscall per frame, the kernel sleeps us when there is nothing to read.
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) die("baseline: /dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("baseline: TUNSETIFF");
    int hdr = HDR, le = 1;
    if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) die("baseline: TUNSETVNETHDRSZ");
    if (ioctl(fd, TUNSETVNETLE, &le) < 0) die("baseline: TUNSETVNETLE");
    if (q == 0 && ioctl(fd, TUNSETOFFLOAD, offloads) < 0) die("baseline: TUNSETOFFLOAD");
    W[q].fd = fd;
  }
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("baseline: socket");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  ifr.ifr_qlen = txqlen;
  if (ioctl(s, SIOCSIFTXQLEN, &ifr) < 0) die("baseline: SIOCSIFTXQLEN");
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("baseline: SIOCGIFFLAGS");
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("baseline: SIOCSIFFLAGS");

  for (int q = 0; q < queues; q++) {
    if (pthread_create(&W[q].th, NULL, is_tx ? run_tx : run_rx, &W[q]) != 0) die("baseline: pthread_create");
  }
  printf("ready\n");
  fflush(stdout);

  sleep_ms(warm);
  uint64_t f0 = 0, b0 = 0, c0 = 0, t0 = mono_ns();
  for (int q = 0; q < queues; q++) {
    f0 += atomic_load(&W[q].frames);
    b0 += atomic_load(&W[q].bytes);
    c0 += thread_cpu_ns(W[q].th);
  }
  sleep_ms(dur);
  uint64_t f1 = 0, b1 = 0, c1 = 0, t1 = mono_ns();
  for (int q = 0; q < queues; q++) {
    f1 += atomic_load(&W[q].frames);
    b1 += atomic_load(&W[q].bytes);
    c1 += thread_cpu_ns(W[q].th);
  }
  printf("{\"frames\":%llu,\"bytes\":%llu,\"cpuNs\":%llu,\"wallNs\":%llu}\n", (unsigned long long)(f1 - f0),
         (unsigned long long)(b1 - b0), (unsigned long long)(c1 - c0), (unsigned long long)(t1 - t0));
  fflush(stdout);
  _exit(0);  // readers may be blocked in read(); the TAP goes away with the fds
}
