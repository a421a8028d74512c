// baseline: the user-space ceilings the benchmark compares vhost-tap against.
// Opens the bench's TAP itself (one queue per thread, IFF_VNET_HDR with the
// same 12-byte header vhost-tap's guest negotiates) and moves the bench's
// frames with no virtqueue at all, by one of two methods:
//   loop   one plain write() or read() per frame (the syscall ceiling);
//          TX on an O_NONBLOCK fd, RX blocking in read() when the queue is empty;
//   uring  io_uring, batches of URING_BATCH unlinked WRITEs per io_uring_enter
//          (RX: as many READs as the queue held last time, up to
//          URING_BATCH), the TAP fd registered (IOSQE_FIXED_FILE), the ring
//          set up SINGLE_ISSUER|DEFER_TASKRUN where the kernel has them (else
//          COOP_TASKRUN, else plain): the fastest single-thread way user space
//          has to write a TAP. Raw syscalls: liburing is not on a fresh machine.
// Run inside the bench's namespace (ip netns exec) so the TAP lives there.
//
// Usage: baseline loop|uring tx|rx IFNAME FILE RECLEN NREC QUEUES WARMUP_MS DURATION_MS OFFLOADS TXQLEN
//   FILE: NREC records of RECLEN bytes (virtio_net_hdr + frame) to write (tx).
//   OFFLOADS: TUNSETOFFLOAD flags (what the reader accepts, e.g. CSUM|TSO4 for GSO RX).
// Prints "ready" once the TAP is up, then after warm-up and the measured window
// one JSON line: frames, bytes (frame bytes, header excluded), cpuNs of the I/O
// threads, wallNs of the window, and for uring the setup it got ("uring").
// When io_uring cannot be used at all it prints {"unavailable": REASON} and exits 3.
//
//        baseline syscall N
// Times N getppid() system calls (the cheapest there is) and prints
// {"getppidNs": ns per call}: what entering the kernel costs on this machine.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAXQ 16
#define HDR 12
#define RXBUF (HDR + 14 + 65535 + 64)
// Requests per io_uring_enter: the batch the engine uses too. Larger batches
// gain little once the enter is shared by 64 frames (measured: ~15 ns/frame of
// the ~750 a 64 B frame costs), and each RX slot holds a 64 KB buffer.
#define URING_BATCH 64

// Kernel uapi newer than some distributions' headers (values are ABI).
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

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
// What io_uring setup the workers got (the same for all: same kernel).
static const char* _Atomic uring_setup_name;

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

static void die(const char* what) {
  perror(what);
  exit(1);
}

// --- loop: one syscall per frame ------------------------------------------------

static void* run_tx(void* arg) {
  struct worker* w = arg;
  for (uint64_t i = 0;; i++) {
    const uint8_t* r = recs + (i % nrec) * reclen;
    ssize_t n = write(w->fd, r, reclen);
    if (n < 0) {
      if (errno == EAGAIN) {
        // Only with a finite TUNSETSNDBUF (someone else's): wait for room.
        struct pollfd p = {w->fd, POLLOUT, 0};
        poll(&p, 1, -1);
        i--;
        continue;
      }
      if (errno == EINTR) {
        i--;
        continue;
      }
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

// --- uring: batches of unlinked requests on a registered fd ----------------------

struct ring {
  int fd;
  unsigned *sq_tail, sq_mask, *cq_head, *cq_tail, cq_mask;
  struct io_uring_sqe* sqes;
  struct io_uring_cqe* cqes;
  int fixed;  // the TAP fd is registered file 0
};

// Sets up a ring for one thread, best setup first; returns 0 or an errno.
static int ring_init(struct ring* r, int tap_fd, const char** name) {
  // SINGLE_ISSUER|DEFER_TASKRUN (6.1): completions are run only when this
  // thread asks for them, no task-work interrupts. COOP_TASKRUN (5.19): no
  // IPI to post completions. Older kernels reject unknown flags with EINVAL.
  static const struct {
    unsigned flags;
    const char* name;
  } setups[] = {
      {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "defer-taskrun"},
      {IORING_SETUP_COOP_TASKRUN, "coop-taskrun"},
      {0, "plain"},
  };
  struct io_uring_params p;
  int fd = -1;
  size_t i;
  for (i = 0; i < sizeof setups / sizeof *setups; i++) {
    memset(&p, 0, sizeof p);
    p.flags = setups[i].flags;
    fd = (int)syscall(__NR_io_uring_setup, URING_BATCH, &p);
    if (fd >= 0 || errno != EINVAL) break;
  }
  if (fd < 0) return errno;
  // One mmap for both rings (IORING_FEAT_SINGLE_MMAP, 5.4); older kernels
  // are treated as having no usable io_uring.
  if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
    close(fd);
    return ENOSYS;
  }
  size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if (cq_len > sq_len) sq_len = cq_len;
  uint8_t* q = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
  void* s = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                 IORING_OFF_SQES);
  if (q == MAP_FAILED || s == MAP_FAILED) return errno;
  r->fd = fd;
  r->sqes = s;
  r->sq_tail = (unsigned*)(q + p.sq_off.tail);
  r->sq_mask = *(unsigned*)(q + p.sq_off.ring_mask);
  unsigned* array = (unsigned*)(q + p.sq_off.array);
  for (unsigned k = 0; k < p.sq_entries; k++) array[k] = k;  // SQ slot k holds SQE k, for good
  r->cq_head = (unsigned*)(q + p.cq_off.head);
  r->cq_tail = (unsigned*)(q + p.cq_off.tail);
  r->cq_mask = *(unsigned*)(q + p.cq_off.ring_mask);
  r->cqes = (struct io_uring_cqe*)(q + p.cq_off.cqes);
  // A registered file saves the fd lookup and reference per request (5.1).
  r->fixed = syscall(__NR_io_uring_register, fd, IORING_REGISTER_FILES, &tap_fd, 1) == 0;
  static char names[3][32];
  snprintf(names[i], sizeof names[i], "%s%s", setups[i].name, r->fixed ? "+fixed-file" : "");
  *name = names[i];
  return 0;
}

static void ring_queue(struct ring* r, int tap_fd, uint8_t op, void* buf, unsigned len, uint64_t ud) {
  unsigned tail = *r->sq_tail;
  struct io_uring_sqe* e = &r->sqes[tail & r->sq_mask];
  memset(e, 0, sizeof *e);
  e->opcode = op;
  e->fd = r->fixed ? 0 : tap_fd;
  e->flags = r->fixed ? IOSQE_FIXED_FILE : 0;
  e->off = (uint64_t)-1;  // a TAP is a stream: current position
  e->addr = (uint64_t)(uintptr_t)buf;
  e->len = len;
  // Never wait inside the kernel: a write with no room or a read with no
  // frame completes at once with -EAGAIN instead of arming a poll.
  e->rw_flags = RWF_NOWAIT;
  e->user_data = ud;
  __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
}

// Submits n queued requests and waits for all n completions; res[i] gets the
// result of the request queued with user_data i.
static void ring_run(struct ring* r, unsigned n, int32_t* res) {
  unsigned submit = n, done = 0;
  while (done < n) {
    int x = (int)syscall(__NR_io_uring_enter, r->fd, submit, n - done, IORING_ENTER_GETEVENTS, NULL, 0);
    if (x < 0) {
      if (errno == EINTR) continue;
      perror("baseline: io_uring_enter");
      exit(1);
    }
    submit -= (unsigned)x < submit ? (unsigned)x : submit;
    unsigned head = *r->cq_head, tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; head++, done++) {
      const struct io_uring_cqe* c = &r->cqes[head & r->cq_mask];
      res[c->user_data] = c->res;
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
  }
}

// Each worker sets up its own ring: SINGLE_ISSUER binds a ring to the thread
// that created it. main() already checked that io_uring works here.
static struct ring* worker_ring(struct worker* w) {
  struct ring* r = calloc(1, sizeof *r);
  const char* name = NULL;
  int err = r ? ring_init(r, w->fd, &name) : ENOMEM;
  if (err) {
    fprintf(stderr, "baseline: io_uring_setup: %s\n", strerror(err));
    exit(1);
  }
  atomic_store(&uring_setup_name, name);
  return r;
}

static void* run_tx_uring(void* arg) {
  struct worker* w = arg;
  struct ring* r = worker_ring(w);
  int32_t res[URING_BATCH];
  for (uint64_t i = 0;;) {
    for (unsigned k = 0; k < URING_BATCH; k++, i++)
      ring_queue(r, w->fd, IORING_OP_WRITE, recs + (i % nrec) * reclen, (unsigned)reclen, k);
    ring_run(r, URING_BATCH, res);
    uint64_t frames = 0;
    for (unsigned k = 0; k < URING_BATCH; k++) {
      if (res[k] >= 0) {
        frames++;
      } else if (res[k] != -EAGAIN && res[k] != -EINTR) {
        fprintf(stderr, "baseline: io_uring write: %s\n", strerror(-res[k]));
        exit(1);
      }
    }
    atomic_fetch_add_explicit(&w->frames, frames, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->bytes, frames * (reclen - HDR), memory_order_relaxed);
  }
  return NULL;
}

static void* run_rx_uring(void* arg) {
  struct worker* w = arg;
  struct ring* r = worker_ring(w);
  uint8_t* bufs = malloc((size_t)URING_BATCH * RXBUF);
  if (!bufs) die("baseline: malloc");
  int32_t res[URING_BATCH];
  // Reads per batch adapt to what the queue holds, as vhost-tap's engine
  // does: a read that finds the queue empty still costs a request, so after
  // a partial batch post as many as came, after a full one twice as many.
  unsigned n = URING_BATCH;
  for (;;) {
    for (unsigned k = 0; k < n; k++) ring_queue(r, w->fd, IORING_OP_READ, bufs + (size_t)k * RXBUF, RXBUF, k);
    ring_run(r, n, res);
    uint64_t frames = 0, bytes = 0;
    unsigned got = 0;
    for (unsigned k = 0; k < n; k++) {
      if (res[k] >= 0) got++;
      if (res[k] > HDR) {
        frames++;
        bytes += (uint64_t)res[k] - HDR;
      } else if (res[k] < 0 && res[k] != -EAGAIN && res[k] != -EINTR) {
        fprintf(stderr, "baseline: io_uring read: %s\n", strerror(-res[k]));
        exit(1);
      }
    }
    if (frames) {
      atomic_fetch_add_explicit(&w->frames, frames, memory_order_relaxed);
      atomic_fetch_add_explicit(&w->bytes, bytes, memory_order_relaxed);
    }
    if (got == n) {
      n = n * 2 < URING_BATCH ? n * 2 : URING_BATCH;
    } else if (got > 0) {
      n = got;
    } else {
      // Nothing queued: sleep until a frame is, like the read() loop's blocking read.
      struct pollfd p = {w->fd, POLLIN, 0};
      while (poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
      n = 2;
    }
  }
  return NULL;
}

// --------------------------------------------------------------------------------

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) < 0 && errno == EINTR) {
  }
}

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "syscall") == 0) {
    long n = atol(argv[2]);
    if (n <= 0) return 2;
    syscall(SYS_getppid);
    uint64_t t0 = mono_ns();
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    printf("{\"getppidNs\":%.1f}\n", (double)(mono_ns() - t0) / (double)n);
    return 0;
  }
  if (argc != 12) {
    fprintf(stderr,
            "usage: baseline loop|uring tx|rx IFNAME FILE RECLEN NREC QUEUES WARMUP_MS DURATION_MS OFFLOADS TXQLEN\n"
            "       baseline syscall N\n");
    return 2;
  }
  const int uring = strcmp(argv[1], "uring") == 0;
  if (!uring && strcmp(argv[1], "loop") != 0) {
    fprintf(stderr, "baseline: method must be loop or uring\n");
    return 2;
  }
  argv++;  // the rest as before the method argument existed
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
    // RX loop: a blocking fd, the kernel sleeps us when there is nothing to
    // read. TX: O_NONBLOCK, because tun builds the skb around a page fragment
    // (tun_build_skb) only for non-blocking writes and otherwise allocates it
    // against the socket's sndbuf: ~65 ns more per 64 B frame, which would
    // make the write() ceiling look lower than it is. With the default sndbuf
    // (INT_MAX) a non-blocking TAP write is never refused. uring: RWF_NOWAIT
    // does the not-waiting.
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | (is_tx ? O_NONBLOCK : 0));
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

  if (uring) {
    // io_uring may be missing (old kernel), disabled (kernel.io_uring_disabled)
    // or filtered (seccomp): say so before "ready", the bench then reports
    // this contender as unavailable instead of failing.
    struct ring probe;
    const char* name;
    int err = ring_init(&probe, W[0].fd, &name);
    if (err) {
      printf("{\"unavailable\":\"io_uring_setup: %s\"}\n", strerror(err));
      return 3;
    }
    close(probe.fd);
  }
  void* (*fn)(void*) = is_tx ? (uring ? run_tx_uring : run_tx) : (uring ? run_rx_uring : run_rx);
  for (int q = 0; q < queues; q++) {
    if (pthread_create(&W[q].th, NULL, fn, &W[q]) != 0) die("baseline: pthread_create");
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
  const char* setup = atomic_load(&uring_setup_name);
  printf("{\"frames\":%llu,\"bytes\":%llu,\"cpuNs\":%llu,\"wallNs\":%llu%s%s%s}\n", (unsigned long long)(f1 - f0),
         (unsigned long long)(b1 - b0), (unsigned long long)(c1 - c0), (unsigned long long)(t1 - t0),
         setup ? ",\"uring\":\"" : "", setup ? setup : "", setup ? "\"" : "");
  fflush(stdout);
  _exit(0);  // readers may be blocked in read(); the TAP goes away with the fds
}
