/*
 * delay-line: a user-space WAN emulator on TUN devices, for kernels without the netem qdisc.
 *
 * Each lane is one TUN device (IFF_TUN | IFF_NO_PI) that this program creates and brings up. Every
 * IPv4 packet the kernel routes into the TUN is read, held for the lane's delay (plus jitter), and
 * written back into the same TUN, where the kernel receives it as if it had arrived on that
 * interface and forwards it on. A router namespace sends each direction of a link through its own
 * lane with policy routing (`ip rule add iif LINK lookup TABLE`, TABLE: `default dev LANE`), so a
 * packet crosses the delay line exactly once per direction.
 *
 * Timing: a packet's arrival is the kernel's own timestamp of it: a packet socket on each TUN
 * (filtered to packets routed into it, first 64 bytes) receives a copy stamped when the packet was
 * handed to the device, matched to what read() returns by those bytes. The time of the read()
 * itself would be late by this process's wake-up latency (`readLagUs`, often 10-30 µs, at times
 * milliseconds on a busy machine); without a matching copy it is the fallback (`readStamped`).
 * One time-ordered queue (a binary heap) holds every lane's packets; a timerfd armed with an
 * absolute CLOCK_MONOTONIC deadline wakes the program for the earliest release, so an idle or
 * waiting delay line uses no CPU. How late releases are is measured per lane (`lateUs`: time of
 * the write minus scheduled release). A timer wake-up after a long sleep is late by the CPU's
 * idle-exit latency (measured in this project's VM: ~20 µs after 100 µs of sleep, ~85 µs after
 * 10 ms), so --spin-us N arms the timer N µs early and spins on the clock for the rest. Spinning
 * is paid from a budget (--spin-budget-pct, of one CPU): a busy link whose releases follow each
 * other closely stops spinning once the budget is spent, and its CPU, awake anyway, wakes up
 * quickly. On a machine whose CPUs are busy, a wake-up also waits for the running task's time
 * slice (milliseconds): --realtime (SCHED_FIFO) lets the delay line preempt it.
 *
 * Throughput: each packet costs a read, its timestamp's match and a write (`writeUs`: the write
 * runs the kernel's forwarding of the packet), ~10 µs on this project's VM. A burst that arrives
 * at once therefore leaves at that pace, like through a ~1 Gbit/s bottleneck: `lateUs` shows it.
 * The TUN's own ring (--txqueuelen, default 10000 packets) holds a burst while the program is busy;
 * what it drops is reported as `droppedTun`.
 *
 * Order: by default the packets of one flow (IPv4 source, destination, protocol and, for
 * unfragmented TCP/UDP, ports) leave in the order they came: a packet is never released before the
 * previous packet of its flow (flows are hashed into 4096 slots per lane; two flows sharing a slot
 * are simply kept in order together). Real WAN paths rarely reorder a TCP flow, and reordering
 * would make TCP's own numbers noisy. With jitter this means a packet that drew a short delay
 * waits for the one before it (counted in `heldForOrder`). --reorder releases every packet at its
 * own drawn time.
 *
 * usage: delay-line [LANE OPTIONS] --tun NAME [LANE OPTIONS] [--tun NAME [LANE OPTIONS]]...
 *                   [--stats-file PATH] [--seed N] [--spin-us N] [--spin-budget-pct P] [--realtime]
 *                   [--read-time] [--txqueuelen N]
 *   Lane options given before the first --tun are the defaults of every lane; after a --tun they
 *   apply to that lane only:
 *   --delay-ms D        one-way delay, milliseconds (decimal, 0..60000; default 0)
 *   --jitter-ms J       jitter, milliseconds (decimal, 0..60000; default 0)
 *   --jitter-dist uniform|normal
 *                       uniform (default): delay + U(-J, +J); normal: delay + N(0, J²) cut at ±4 J;
 *                       a drawn delay below 0 is 0
 *   --loss-pct P        each packet is dropped with probability P/100 (decimal, 0..100; default 0)
 *   --limit-packets N   at most N packets held in the lane (default 100000)
 *   --limit-bytes B     at most B bytes held in the lane (default 64 MiB)
 *   --reorder           packets of a flow may overtake each other (see Order)
 *   Global: --stats-file PATH: statistics go to PATH (replaced atomically) instead of stdout;
 *   --seed N: the random generator's seed (default: time and pid); --spin-us N (0..1000, default
 *   0); --spin-budget-pct P (0..100, default 5); --realtime: SCHED_FIFO priority 10 (wake-ups are
 *   not queued behind busy processes); --read-time: arrival is the read() time (no packet socket);
 *   --txqueuelen N: the TUNs' ring (1..1000000, default 10000).
 *
 * Signals: SIGUSR1 writes one JSON line of statistics; SIGUSR2 writes it ("event":"reset") and
 * starts the counters again (the queue's contents stay); SIGTERM, SIGINT and SIGHUP write it with
 * "event":"exit" and exit 0 (packets still held are discarded and reported as `queuedPackets`).
 * stderr: "delay-line: ready LANE..." once every TUN is up.
 * Exit 2 on bad arguments, 1 when a TUN cannot be created or I/O fails.
 * link: -lm
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_LANES 8
#define FLOW_SLOTS 4096
#define HIST_BUCKETS 10001 /* 1 µs each; the last one holds everything from 10 ms on */
#define STAMP_SNAP 64         /* bytes of each packet the timestamp socket keeps, to match it */
#define STAMP_FIFO 4096
#define READ_BATCH 32 /* per lane and wake-up: releases due meanwhile wait at most this many reads */
#define MAX_PACKET 65536

enum jitter_dist { JITTER_UNIFORM, JITTER_NORMAL };

struct lane_config {
  double delay_ms, jitter_ms, loss_pct;
  enum jitter_dist dist;
  long long limit_packets, limit_bytes;
  int reorder;
};

struct hist {
  uint64_t count, bucket[HIST_BUCKETS];
  double max_us;
};

/* The kernel's copy of a packet routed into the TUN, with the time it was sent there. */
struct stamp {
  uint64_t mono_ns;
  uint32_t snap;
  unsigned char data[STAMP_SNAP];
};

struct lane {
  char name[IFNAMSIZ];
  struct lane_config cfg;
  int fd;
  int stamp_fd; /* -1: arrival is the read() time */
  struct stamp stamps[STAMP_FIFO];
  unsigned stamp_head, stamp_len;
  uint64_t stamped, unstamped;
  struct hist read_lag; /* read() time minus the kernel's timestamp */
  uint64_t flow_last[FLOW_SLOTS]; /* latest release time per flow slot (ns) */
  uint64_t received, received_bytes, sent, sent_bytes, dropped_loss, dropped_queue, write_errors;
  uint64_t held_for_order;
  long long queued_packets, queued_bytes, max_queue_packets, max_queue_bytes;
  uint64_t scheduled; /* packets queued with a drawn delay */
  double delay_sum_ms, delay_min_ms, delay_max_ms;
  struct hist late;  /* write time minus scheduled release */
  struct hist write; /* how long write() took: the kernel forwarding the packet on */
};

struct packet {
  uint64_t release_ns, seq;
  int lane;
  uint32_t len;
  unsigned char data[];
};

static struct lane lanes[MAX_LANES];
static int n_lanes;
static struct packet **heap;
static size_t heap_len, heap_cap;
static uint64_t next_seq;
static const char *stats_file;
static uint64_t report_seq;
static uint64_t start_ns;
static long spin_us;
static int tun_queue_len = 10000;
static double spin_budget_pct = 5;
static int64_t spin_tokens_ns;
static uint64_t spin_refilled_ns, spin_total_ns;

/* Spinning is paid from a budget that refills at spin_budget_pct of real time (at most 20 ms
 * saved): a busy link, where releases follow each other closely, would otherwise spin a whole
 * core, and at that rate the CPU does not sleep deeply anyway, so its wake-ups are quick. */
static int64_t spin_tokens(uint64_t now) {
  if (now > spin_refilled_ns) {
    spin_tokens_ns += (int64_t)((double)(now - spin_refilled_ns) * spin_budget_pct / 100.0);
    if (spin_tokens_ns > 20000000) spin_tokens_ns = 20000000;
    spin_refilled_ns = now;
  }
  return spin_tokens_ns;
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* splitmix64: a 64-bit counter through a mixing function; plenty for drawing losses and delays. */
static uint64_t rng_state;

static uint64_t rng_next(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unit(void) { return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0); }

static double rng_normal(void) {
  /* Box-Muller; 1 - u keeps the logarithm's argument in (0, 1]. */
  double u = 1.0 - rng_unit(), v = rng_unit();
  return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

static void usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "delay-line: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr,
          "\nusage: delay-line [LANE OPTIONS] --tun NAME [LANE OPTIONS] [--tun NAME ...]\n"
          "                  [--stats-file PATH] [--seed N] [--spin-us N] [--spin-budget-pct P] [--realtime]\n"
          "                  [--read-time] [--txqueuelen N]\n"
          "lane options: --delay-ms D --jitter-ms J --jitter-dist uniform|normal --loss-pct P\n"
          "              --limit-packets N --limit-bytes B --reorder\n");
  exit(2);
}

static double parse_double(const char *opt, const char *s, double lo, double hi) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s must be a number from %g to %g, got '%%s'", opt, lo, hi);
    usage_error(msg, s);
  }
  return v;
}

static long long parse_int(const char *opt, const char *s, long long lo, long long hi) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s must be an integer from %lld to %lld, got '%%s'", opt, lo, hi);
    usage_error(msg, s);
  }
  return v;
}

static uint32_t flow_slot(const unsigned char *p, uint32_t len) {
  /* FNV-1a over the fields that name a flow. */
  uint32_t h = 2166136261u;
  if (len < 20 || (p[0] >> 4) != 4) return 0;
  unsigned ihl = (p[0] & 0x0fu) * 4u;
  unsigned char key[13];
  memcpy(key, p + 12, 8);
  key[8] = p[9];
  size_t n = 9;
  unsigned frag = ((unsigned)(p[6] & 0x3f) << 8) | p[7]; /* MF flag and fragment offset */
  if ((p[9] == 6 || p[9] == 17) && frag == 0 && ihl >= 20 && len >= ihl + 4) {
    memcpy(key + 9, p + ihl, 4);
    n = 13;
  }
  for (size_t i = 0; i < n; i++) h = (h ^ key[i]) * 16777619u;
  return h & (FLOW_SLOTS - 1);
}

static int earlier(const struct packet *a, const struct packet *b) {
  return a->release_ns < b->release_ns || (a->release_ns == b->release_ns && a->seq < b->seq);
}

static void heap_push(struct packet *p) {
  if (heap_len == heap_cap) {
    size_t cap = heap_cap ? heap_cap * 2 : 1024;
    struct packet **h = realloc(heap, cap * sizeof *h);
    if (!h) {
      fprintf(stderr, "delay-line: out of memory\n");
      exit(1);
    }
    heap = h;
    heap_cap = cap;
  }
  size_t i = heap_len++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!earlier(p, heap[parent])) break;
    heap[i] = heap[parent];
    i = parent;
  }
  heap[i] = p;
}

static struct packet *heap_pop(void) {
  struct packet *top = heap[0];
  struct packet *last = heap[--heap_len];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= heap_len) break;
    if (c + 1 < heap_len && earlier(heap[c + 1], heap[c])) c++;
    if (!earlier(heap[c], last)) break;
    heap[i] = heap[c];
    i = c;
  }
  if (heap_len > 0) heap[i] = last;
  return top;
}

static void hist_add(struct hist *h, double us) {
  int b = us < 0 ? 0 : us >= HIST_BUCKETS - 1 ? HIST_BUCKETS - 1 : (int)us;
  h->bucket[b]++;
  h->count++;
  if (us > h->max_us) h->max_us = us;
}

static double hist_quantile(const struct hist *h, double q) {
  if (h->count == 0) return 0;
  uint64_t rank = (uint64_t)ceil(q * (double)h->count), seen = 0;
  if (rank == 0) rank = 1;
  for (int i = 0; i < HIST_BUCKETS; i++) {
    seen += h->bucket[i];
    if (seen >= rank) return i;
  }
  return HIST_BUCKETS - 1;
}

/* Packets the kernel dropped at the TUN before this program could read them (-1: unknown). */
static long long tun_tx_dropped(const char *name) {
  char path[128];
  snprintf(path, sizeof path, "/sys/class/net/%.15s/statistics/tx_dropped", name);
  FILE *f = fopen(path, "r");
  long long v = -1;
  if (f) {
    if (fscanf(f, "%lld", &v) != 1) v = -1;
    fclose(f);
  }
  return v;
}

static size_t hist_json(const struct hist *h, char *out, size_t cap) {
  return (size_t)snprintf(out, cap, "{\"count\":%llu,\"p50\":%g,\"p90\":%g,\"p99\":%g,\"p999\":%g,\"max\":%.1f}",
                          (unsigned long long)h->count, hist_quantile(h, 0.5), hist_quantile(h, 0.9),
                          hist_quantile(h, 0.99), hist_quantile(h, 0.999), h->max_us);
}

static const char *dist_name(enum jitter_dist d) { return d == JITTER_NORMAL ? "normal" : "uniform"; }

static void write_stats(const char *event) {
  static char buf[8192 * MAX_LANES];
  size_t n = 0;
  uint64_t now = now_ns();
#define OUT(...) n += (size_t)snprintf(buf + n, n < sizeof buf ? sizeof buf - n : 0, __VA_ARGS__)
  OUT("{\"event\":\"%s\",\"seq\":%llu,\"uptimeS\":%.3f,\"spinUs\":%ld,\"spinBudgetPct\":%g,"
      "\"spinMs\":%.3f,\"lanes\":[",
      event, (unsigned long long)++report_seq, (double)(now - start_ns) / 1e9, spin_us, spin_budget_pct,
      (double)spin_total_ns / 1e6);
  for (int i = 0; i < n_lanes; i++) {
    const struct lane *l = &lanes[i];
    OUT("%s{\"tun\":\"%s\",\"delayMs\":%g,\"jitterMs\":%g,\"jitterDist\":\"%s\",\"lossPct\":%g,"
        "\"limitPackets\":%lld,\"limitBytes\":%lld,\"reorder\":%s,"
        "\"received\":%llu,\"receivedBytes\":%llu,\"sent\":%llu,\"sentBytes\":%llu,"
        "\"droppedLoss\":%llu,\"droppedQueue\":%llu,\"writeErrors\":%llu,\"heldForOrder\":%llu,"
        "\"queuedPackets\":%lld,\"queuedBytes\":%lld,\"maxQueuePackets\":%lld,\"maxQueueBytes\":%lld,"
        "\"scheduledDelayMs\":{\"mean\":%.4f,\"min\":%.4f,\"max\":%.4f},"
        "\"droppedTun\":%lld,\"kernelStamped\":%llu,\"readStamped\":%llu,",
        i ? "," : "", l->name, l->cfg.delay_ms, l->cfg.jitter_ms, dist_name(l->cfg.dist), l->cfg.loss_pct,
        l->cfg.limit_packets, l->cfg.limit_bytes, l->cfg.reorder ? "true" : "false",
        (unsigned long long)l->received, (unsigned long long)l->received_bytes,
        (unsigned long long)l->sent, (unsigned long long)l->sent_bytes,
        (unsigned long long)l->dropped_loss, (unsigned long long)l->dropped_queue,
        (unsigned long long)l->write_errors, (unsigned long long)l->held_for_order, l->queued_packets,
        l->queued_bytes, l->max_queue_packets, l->max_queue_bytes,
        l->scheduled ? l->delay_sum_ms / (double)l->scheduled : 0.0,
        l->delay_min_ms, l->delay_max_ms, tun_tx_dropped(l->name), (unsigned long long)l->stamped,
        (unsigned long long)l->unstamped);
    OUT("\"lateUs\":");
    n += hist_json(&l->late, buf + n, n < sizeof buf ? sizeof buf - n : 0);
    OUT(",\"writeUs\":");
    n += hist_json(&l->write, buf + n, n < sizeof buf ? sizeof buf - n : 0);
    OUT(",\"readLagUs\":");
    n += hist_json(&l->read_lag, buf + n, n < sizeof buf ? sizeof buf - n : 0);
    OUT("}");
  }
  OUT("]}\n");
#undef OUT
  if (n >= sizeof buf) n = sizeof buf - 1;
  if (!stats_file) {
    fwrite(buf, 1, n, stdout);
    fflush(stdout);
    return;
  }
  /* Readers poll the file: a rename never shows them half a line. */
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", stats_file);
  FILE *f = fopen(tmp, "w");
  if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0 || rename(tmp, stats_file) != 0)
    fprintf(stderr, "delay-line: cannot write %s: %s\n", stats_file, strerror(errno));
}

/* A benchmark measures one phase at a time: what happened before it (a lab starting up) must not
 * blur its distributions. */
static void reset_counters(void) {
  for (int i = 0; i < n_lanes; i++) {
    struct lane *l = &lanes[i];
    l->received = l->received_bytes = l->sent = l->sent_bytes = 0;
    l->dropped_loss = l->dropped_queue = l->write_errors = l->held_for_order = 0;
    l->max_queue_packets = l->queued_packets;
    l->max_queue_bytes = l->queued_bytes;
    l->scheduled = 0;
    l->delay_sum_ms = l->delay_min_ms = l->delay_max_ms = 0;
    l->stamped = l->unstamped = 0;
    memset(&l->late, 0, sizeof l->late);
    memset(&l->write, 0, sizeof l->write);
    memset(&l->read_lag, 0, sizeof l->read_lag);
  }
  spin_total_ns = 0;
}

static int open_tun(const char *name) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "delay-line: /dev/net/tun: %s\n", strerror(errno));
    exit(1);
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  memcpy(ifr.ifr_name, name, strnlen(name, IFNAMSIZ - 1)); /* validated: shorter than IFNAMSIZ */
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    fprintf(stderr, "delay-line: cannot create TUN %s: %s\n", name, strerror(errno));
    exit(1);
  }
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
    fprintf(stderr, "delay-line: %s: cannot read flags: %s\n", name, strerror(errno));
    exit(1);
  }
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
    fprintf(stderr, "delay-line: %s: cannot bring up: %s\n", name, strerror(errno));
    exit(1);
  }
  /* The TUN's own ring (txqueuelen packets) drops what arrives while this program is busy, before
   * any of our counters sees it: a burst of a fast TCP sender is held in our queue instead. */
  ifr.ifr_qlen = tun_queue_len;
  if (ioctl(s, SIOCSIFTXQLEN, &ifr) < 0) {
    fprintf(stderr, "delay-line: %s: cannot set txqueuelen: %s\n", name, strerror(errno));
    exit(1);
  }
  close(s);
  return fd;
}

/*
 * The time a packet is read is late by the wake-up latency of this process (after a long idle
 * sleep ~100 µs on this project's VM), which would be added to the delay. The kernel knows better:
 * a packet socket on the TUN receives a copy of every packet routed into it, stamped when it was
 * handed to the device, before it reaches the TUN's queue. Only outgoing packets (toward this
 * program) pass the filter, and only their first bytes, which identify them.
 */
static int open_stamp_socket(const char *name) {
  int s = socket(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_PKTTYPE)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, STAMP_SNAP),
      BPF_STMT(BPF_RET | BPF_K, 0),
  };
  struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
  int on = 1, rcvbuf = 8 << 20;
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = (int)if_nametoindex(name);
  /* The filter goes on before bind: an unfiltered socket would see the packets we write too. */
  if (sll.sll_ifindex == 0 || setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0 ||
      setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0 ||
      bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) {
    close(s);
    return -1;
  }
  setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
  return s;
}

static void drain_stamps(struct lane *l) {
  struct timespec rt, mt;
  clock_gettime(CLOCK_REALTIME, &rt);
  clock_gettime(CLOCK_MONOTONIC, &mt);
  int64_t real_minus_mono = ((int64_t)rt.tv_sec - (int64_t)mt.tv_sec) * 1000000000 +
                            ((int64_t)rt.tv_nsec - (int64_t)mt.tv_nsec);
  enum { BATCH = 64 };
  static struct stamp in[BATCH];
  static char control[BATCH][CMSG_SPACE(sizeof(struct timespec))];
  struct iovec iov[BATCH];
  struct mmsghdr mm[BATCH];
  for (;;) {
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < BATCH; i++) {
      iov[i].iov_base = in[i].data;
      iov[i].iov_len = STAMP_SNAP;
      mm[i].msg_hdr.msg_iov = &iov[i];
      mm[i].msg_hdr.msg_iovlen = 1;
      mm[i].msg_hdr.msg_control = control[i];
      mm[i].msg_hdr.msg_controllen = sizeof control[i];
    }
    int got = recvmmsg(l->stamp_fd, mm, BATCH, 0, NULL);
    if (got <= 0) return;
    for (int i = 0; i < got; i++) {
      if (l->stamp_len == STAMP_FIFO) { /* the oldest cannot match anything read from now on */
        l->stamp_head = (l->stamp_head + 1) % STAMP_FIFO;
        l->stamp_len--;
      }
      struct stamp *st = &l->stamps[(l->stamp_head + l->stamp_len) % STAMP_FIFO];
      st->snap = mm[i].msg_len < STAMP_SNAP ? mm[i].msg_len : STAMP_SNAP;
      memcpy(st->data, in[i].data, st->snap);
      st->mono_ns = 0;
      for (struct cmsghdr *c = CMSG_FIRSTHDR(&mm[i].msg_hdr); c; c = CMSG_NXTHDR(&mm[i].msg_hdr, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
          struct timespec ts;
          memcpy(&ts, CMSG_DATA(c), sizeof ts);
          st->mono_ns = (uint64_t)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - real_minus_mono);
        }
      }
      l->stamp_len++;
    }
    if (got < BATCH) return;
  }
}

static int find_stamp(struct lane *l, const unsigned char *p, uint32_t len, uint64_t *at) {
  for (unsigned i = 0; i < l->stamp_len; i++) {
    struct stamp *st = &l->stamps[(l->stamp_head + i) % STAMP_FIFO];
    /* The IPv4 header within the first bytes carries the total length and the IP ID too. */
    if (len < st->snap || memcmp(st->data, p, st->snap) != 0) continue;
    *at = st->mono_ns;
    /* Copies before this one are packets the TUN's queue dropped; both queues are in order. */
    l->stamp_head = (l->stamp_head + i + 1) % STAMP_FIFO;
    l->stamp_len -= i + 1;
    return 1;
  }
  return 0;
}

/* When the packet was handed to the TUN: the kernel's stamp if there is a plausible one. */
static uint64_t arrival_time(struct lane *l, const unsigned char *p, uint32_t len, uint64_t read_ns) {
  uint64_t at = 0;
  if (l->stamp_fd >= 0 && !find_stamp(l, p, len, &at)) {
    drain_stamps(l);
    find_stamp(l, p, len, &at);
  }
  /* A stamp from the future or from long ago means the clocks were stepped meanwhile. */
  if (at == 0 || at > read_ns || read_ns - at > 1000000000u) {
    l->unstamped++;
    return read_ns;
  }
  l->stamped++;
  hist_add(&l->read_lag, (double)(read_ns - at) / 1e3);
  return at;
}

static double draw_delay_ms(const struct lane_config *c) {
  double d = c->delay_ms;
  if (c->jitter_ms > 0) {
    if (c->dist == JITTER_UNIFORM) {
      d += (2.0 * rng_unit() - 1.0) * c->jitter_ms;
    } else {
      double z = rng_normal();
      if (z > 4) z = 4;
      if (z < -4) z = -4;
      d += z * c->jitter_ms;
    }
  }
  return d < 0 ? 0 : d;
}

static void accept_packet(int li, const unsigned char *p, uint32_t len, uint64_t t) {
  struct lane *l = &lanes[li];
  l->received++;
  l->received_bytes += len;
  if (l->cfg.loss_pct > 0 && rng_unit() * 100.0 < l->cfg.loss_pct) {
    l->dropped_loss++;
    return;
  }
  if (l->queued_packets + 1 > l->cfg.limit_packets || l->queued_bytes + len > l->cfg.limit_bytes) {
    l->dropped_queue++;
    return;
  }
  struct packet *pk = malloc(sizeof *pk + len);
  if (!pk) {
    l->dropped_queue++;
    return;
  }
  double d = draw_delay_ms(&l->cfg);
  uint64_t release = t + (uint64_t)llround(d * 1e6);
  if (!l->cfg.reorder) {
    uint32_t slot = flow_slot(p, len);
    if (release < l->flow_last[slot]) {
      release = l->flow_last[slot];
      l->held_for_order++;
    }
    l->flow_last[slot] = release;
  }
  if (l->scheduled == 0 || d < l->delay_min_ms) l->delay_min_ms = d;
  if (l->scheduled == 0 || d > l->delay_max_ms) l->delay_max_ms = d;
  l->scheduled++;
  l->delay_sum_ms += d;
  pk->release_ns = release;
  pk->seq = next_seq++;
  pk->lane = li;
  pk->len = len;
  memcpy(pk->data, p, len);
  heap_push(pk);
  l->queued_packets++;
  l->queued_bytes += len;
  if (l->queued_packets > l->max_queue_packets) l->max_queue_packets = l->queued_packets;
  if (l->queued_bytes > l->max_queue_bytes) l->max_queue_bytes = l->queued_bytes;
}

static void release_due(void) {
  int spun = 0;
  while (heap_len > 0) {
    uint64_t now = now_ns();
    struct packet *top = heap[0];
    if (top->release_ns > now) {
      uint64_t gap = top->release_ns - now;
      /* Spinning only covers the stretch the timer was armed early for, and once per call: on a
       * busy link the next release is always near, and spinning from one to the next would leave
       * the TUNs unread (their packets' delays would start late). */
      if (spun || gap > (uint64_t)spin_us * 1000u || spin_tokens(now) < (int64_t)gap) return;
      spun = 1;
      uint64_t t;
      while ((t = now_ns()) < top->release_ns) {
      }
      spin_tokens_ns -= (int64_t)(t - now);
      spin_total_ns += t - now;
      continue;
    }
    heap_pop();
    struct lane *l = &lanes[top->lane];
    l->queued_packets--;
    l->queued_bytes -= top->len;
    /* Measured before the write: write() itself runs the kernel's receive path for the packet
     * (often its forwarding too), which is the network's time, not the delay line's. */
    uint64_t t0 = now_ns();
    hist_add(&l->late, (double)(t0 - top->release_ns) / 1e3);
    ssize_t w;
    do w = write(l->fd, top->data, top->len);
    while (w < 0 && errno == EINTR);
    hist_add(&l->write, (double)(now_ns() - t0) / 1e3);
    if (w == (ssize_t)top->len) {
      l->sent++;
      l->sent_bytes += top->len;
    } else {
      l->write_errors++;
    }
    free(top);
  }
}

static void arm_timer(int tfd) {
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  if (heap_len > 0) {
    uint64_t at = heap[0]->release_ns;
    uint64_t early = (uint64_t)spin_us * 1000u;
    if (spin_tokens(now_ns()) < (int64_t)early) early = 0;
    at = at > early ? at - early : 1;
    its.it_value.tv_sec = (time_t)(at / 1000000000u);
    its.it_value.tv_nsec = (long)(at % 1000000000u);
  }
  if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
    fprintf(stderr, "delay-line: timerfd_settime: %s\n", strerror(errno));
    exit(1);
  }
}

int main(int argc, char **argv) {
  struct lane_config defaults = {0, 0, 0, JITTER_UNIFORM, 100000, 64LL << 20, 0};
  struct lane_config *cur = &defaults;
  /* Lane options given before the first --tun are defaults; a lane's own ones override them, so
   * remember which options each lane set itself. */
  unsigned set_mask[MAX_LANES] = {0};
  unsigned *mask = NULL;
  uint64_t seed = 0;
  int have_seed = 0, realtime = 0, kernel_stamps = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    static const char *const flags[] = {"--reorder", "--realtime", "--read-time", NULL};
    static const char *const valued[] = {"--tun",           "--delay-ms",      "--jitter-ms",  "--jitter-dist",
                                         "--loss-pct",      "--limit-packets", "--limit-bytes", "--stats-file",
                                         "--seed",          "--spin-us",       "--spin-budget-pct", "--txqueuelen", NULL};
    int is_flag = 0, known = 0;
    for (int k = 0; flags[k]; k++) is_flag |= !strcmp(a, flags[k]);
    for (int k = 0; valued[k]; k++) known |= !strcmp(a, valued[k]);
    if (!is_flag && !known) usage_error("unknown option '%s'", a);
    if (!is_flag && i + 1 >= argc) usage_error("option %s needs a value", a);
    const char *v = is_flag ? NULL : argv[i + 1];
    if (!strcmp(a, "--tun")) {
      if (n_lanes == MAX_LANES) usage_error("at most 8 lanes (--tun), got more at '%s'", v);
      if (!*v || strlen(v) >= IFNAMSIZ || strchr(v, '/') || strchr(v, ' '))
        usage_error("--tun needs an interface name of 1-15 characters, got '%s'", v);
      for (int k = 0; k < n_lanes; k++)
        if (!strcmp(lanes[k].name, v)) usage_error("TUN %s given twice", v);
      strcpy(lanes[n_lanes].name, v);
      cur = &lanes[n_lanes].cfg;
      mask = &set_mask[n_lanes];
      n_lanes++;
    } else if (!strcmp(a, "--delay-ms")) {
      cur->delay_ms = parse_double(a, v, 0, 60000);
      if (mask) *mask |= 1u;
    } else if (!strcmp(a, "--jitter-ms")) {
      cur->jitter_ms = parse_double(a, v, 0, 60000);
      if (mask) *mask |= 2u;
    } else if (!strcmp(a, "--jitter-dist")) {
      if (!strcmp(v, "uniform")) cur->dist = JITTER_UNIFORM;
      else if (!strcmp(v, "normal")) cur->dist = JITTER_NORMAL;
      else usage_error("--jitter-dist must be uniform or normal, got '%s'", v);
      if (mask) *mask |= 4u;
    } else if (!strcmp(a, "--loss-pct")) {
      cur->loss_pct = parse_double(a, v, 0, 100);
      if (mask) *mask |= 8u;
    } else if (!strcmp(a, "--limit-packets")) {
      cur->limit_packets = parse_int(a, v, 1, 100000000);
      if (mask) *mask |= 16u;
    } else if (!strcmp(a, "--limit-bytes")) {
      cur->limit_bytes = parse_int(a, v, 1, 1LL << 40);
      if (mask) *mask |= 32u;
    } else if (!strcmp(a, "--reorder")) {
      cur->reorder = 1;
      if (mask) *mask |= 64u;
    } else if (!strcmp(a, "--stats-file")) {
      if (!*v) usage_error("--stats-file needs a path%s", "");
      stats_file = v;
    } else if (!strcmp(a, "--seed")) {
      seed = (uint64_t)parse_int(a, v, 0, INT64_MAX);
      have_seed = 1;
    } else if (!strcmp(a, "--spin-us")) {
      spin_us = (long)parse_int(a, v, 0, 1000);
    } else if (!strcmp(a, "--txqueuelen")) {
      tun_queue_len = (int)parse_int(a, v, 1, 1000000);
    } else if (!strcmp(a, "--spin-budget-pct")) {
      spin_budget_pct = parse_double(a, v, 0, 100);
    } else if (!strcmp(a, "--realtime")) {
      realtime = 1;
    } else if (!strcmp(a, "--read-time")) {
      kernel_stamps = 0;
    } else {
      usage_error("unknown option '%s'", a);
    }
    if (!is_flag) i++;
  }
  if (n_lanes == 0) usage_error("at least one --tun NAME is required%s", "");
  for (int k = 0; k < n_lanes; k++) {
    struct lane_config *c = &lanes[k].cfg;
    unsigned m = set_mask[k];
    if (!(m & 1u)) c->delay_ms = defaults.delay_ms;
    if (!(m & 2u)) c->jitter_ms = defaults.jitter_ms;
    if (!(m & 4u)) c->dist = defaults.dist;
    if (!(m & 8u)) c->loss_pct = defaults.loss_pct;
    if (!(m & 16u)) c->limit_packets = defaults.limit_packets;
    if (!(m & 32u)) c->limit_bytes = defaults.limit_bytes;
    if (!(m & 64u)) c->reorder = defaults.reorder;
  }

  if (!have_seed) seed = now_ns() ^ ((uint64_t)getpid() << 32);
  rng_state = seed;

  /* Signals are read from a signalfd in the main loop, never handled asynchronously. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGUSR1);
  sigaddset(&sigs, SIGUSR2);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  sigprocmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (sfd < 0 || tfd < 0 || ep < 0) {
    fprintf(stderr, "delay-line: signalfd/timerfd/epoll: %s\n", strerror(errno));
    return 1;
  }
  /* The default 50 µs timer slack would be added to every release. */
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  if (realtime) {
    struct sched_param sp = {.sched_priority = 10};
    if (sched_setscheduler(0, SCHED_FIFO, &sp) < 0)
      fprintf(stderr, "delay-line: SCHED_FIFO not available (%s); running unprivileged\n", strerror(errno));
  }
  for (int k = 0; k < n_lanes; k++) {
    lanes[k].fd = open_tun(lanes[k].name);
    lanes[k].stamp_fd = kernel_stamps ? open_stamp_socket(lanes[k].name) : -1;
    if (kernel_stamps && lanes[k].stamp_fd < 0)
      fprintf(stderr, "delay-line: %s: no kernel timestamps (%s); arrival is the read time\n",
              lanes[k].name, strerror(errno));
  }

  struct epoll_event ev;
  ev.events = EPOLLIN;
  for (int k = 0; k < n_lanes; k++) {
    ev.data.u32 = (uint32_t)k;
    epoll_ctl(ep, EPOLL_CTL_ADD, lanes[k].fd, &ev);
  }
  ev.data.u32 = 100;
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
  ev.data.u32 = 101;
  epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);

  start_ns = spin_refilled_ns = now_ns();
  fprintf(stderr, "delay-line: ready");
  for (int k = 0; k < n_lanes; k++) fprintf(stderr, " %s", lanes[k].name);
  fprintf(stderr, "\n");

  static unsigned char buf[MAX_PACKET];
  for (;;) {
    release_due();
    arm_timer(tfd);
    struct epoll_event evs[MAX_LANES + 2];
    int n = epoll_wait(ep, evs, MAX_LANES + 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "delay-line: epoll_wait: %s\n", strerror(errno));
      return 1;
    }
    for (int e = 0; e < n; e++) {
      uint32_t id = evs[e].data.u32;
      if (id == 100) {
        uint64_t expirations;
        while (read(tfd, &expirations, sizeof expirations) > 0) {
        }
      } else if (id == 101) {
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
          if (si.ssi_signo == SIGUSR1) {
            write_stats("stats");
          } else if (si.ssi_signo == SIGUSR2) {
            write_stats("reset");
            reset_counters();
          } else {
            write_stats("exit");
            return 0;
          }
        }
      } else {
        for (int b = 0; b < READ_BATCH; b++) {
          ssize_t r = read(lanes[id].fd, buf, sizeof buf);
          if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            fprintf(stderr, "delay-line: read %s: %s\n", lanes[id].name, strerror(errno));
            return 1;
          }
          if (r == 0) break;
          uint64_t read_ns = now_ns();
          accept_packet((int)id, buf, (uint32_t)r, arrival_time(&lanes[id], buf, (uint32_t)r, read_ns));
        }
      }
    }
  }
}
