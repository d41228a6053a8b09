/*
 * pcap-pipe: libpcap capture streamed as a pcap file on standard output, written per wake-up.
 *
 * tcpdump -U writes every packet with its own write(): at tens of thousands of packets per second
 * the writes and the reader's wake-ups cost more CPU than the capture itself, and the kernel ring
 * overflows. This helper drains everything the ring holds at each wake-up and writes it in one
 * write(), so a lone packet still leaves at once (immediate mode) while a burst costs one syscall.
 *
 * Timestamps are CLOCK_MONOTONIC with nanosecond precision (the pcap stream says so with the
 * nanosecond magic number): the kernel stamps packets with the real-time clock, and the reader
 * (Node) has no precise real-time clock, only a monotonic one (process.hrtime), so the conversion
 * happens here, where both clocks can be read back to back. One clock on both sides lets the
 * engine compare capture times with its own (the RTT of what it sends to replicas).
 *
 * link: -lpcap
 * Coalescing: after each drain the helper sleeps COALESCE_US before it waits on the ring again.
 * While it sleeps nobody waits on the capture socket, so the kernel's forwarding path does not
 * wake anyone for the packets that arrive meanwhile: a wake-up per packet costs the forwarded
 * packet a cross-CPU wake-up (measured in the lab: +20 µs per client round trip; with 50-500 µs
 * of coalescing +3 µs). A lone packet is still delivered at once; the ones that follow it within
 * COALESCE_US wait at most that long.
 *
 * usage: pcap-pipe DEVICE SNAPLEN BUFFER_BYTES FILTER [COALESCE_US]
 * stderr: "listening on DEVICE linktype N" once capturing, then once a second
 *         "stats received R dropped D ifdropped I" (libpcap's counters).
 */
#include <errno.h>
#include <poll.h>
#include <pcap/pcap.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define OUT_CAP (4u << 20)

static unsigned char out[OUT_CAP];
static size_t out_len;
static volatile sig_atomic_t stop;
/* CLOCK_REALTIME - CLOCK_MONOTONIC, ns; refreshed before each drain of the ring (an NTP step then
 * shifts at most the packets already waiting). */
static int64_t real_minus_mono_ns;

static int64_t ns_of(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void refresh_clock_offset(void) {
  int64_t r = ns_of(CLOCK_REALTIME);
  int64_t m = ns_of(CLOCK_MONOTONIC);
  real_minus_mono_ns = r - m;
}

static void on_signal(int sig) { (void)sig; stop = 1; }

static int flush_out(void) {
  size_t off = 0;
  while (off < out_len) {
    ssize_t n = write(1, out + off, out_len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    off += (size_t)n;
  }
  out_len = 0;
  return 0;
}

static void put32(uint32_t v) {
  memcpy(out + out_len, &v, 4); /* native byte order; the magic number tells the reader which */
  out_len += 4;
}

static void on_packet(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes) {
  (void)user;
  if (out_len + 16 + h->caplen > OUT_CAP && flush_out() < 0) exit(0);
  /* With nanosecond precision libpcap puts nanoseconds in tv_usec. */
  int64_t mono = (int64_t)h->ts.tv_sec * 1000000000 + h->ts.tv_usec - real_minus_mono_ns;
  if (mono < 0) mono = 0;
  put32((uint32_t)(mono / 1000000000));
  put32((uint32_t)(mono % 1000000000));
  put32(h->caplen);
  put32(h->len);
  memcpy(out + out_len, bytes, h->caplen);
  out_len += h->caplen;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: %s DEVICE SNAPLEN BUFFER_BYTES FILTER [COALESCE_US]\n", argv[0]);
    return 2;
  }
  long coalesce_us = argc == 6 ? atol(argv[5]) : 0;
  if (coalesce_us < 0 || coalesce_us > 1000000) {
    fprintf(stderr, "error: COALESCE_US must be from 0 to 1000000\n");
    return 2;
  }
  char err[PCAP_ERRBUF_SIZE];
  pcap_t *p = pcap_create(argv[1], err);
  if (!p) {
    fprintf(stderr, "error: %s\n", err);
    return 1;
  }
  int snaplen = atoi(argv[2]);
  if (pcap_set_snaplen(p, snaplen) || pcap_set_buffer_size(p, atoi(argv[3])) || pcap_set_immediate_mode(p, 1) ||
      pcap_set_tstamp_precision(p, PCAP_TSTAMP_PRECISION_NANO)) {
    fprintf(stderr, "error: cannot configure the capture\n");
    return 1;
  }
  if (pcap_activate(p) < 0) {
    fprintf(stderr, "error: %s\n", pcap_geterr(p));
    return 1;
  }
  /* "any" gives cooked v1 by default; keep it explicit so the reader knows what comes. */
  if (strcmp(argv[1], "any") == 0) pcap_set_datalink(p, DLT_LINUX_SLL);
  struct bpf_program prog;
  if (pcap_compile(p, &prog, argv[4], 1, PCAP_NETMASK_UNKNOWN) || pcap_setfilter(p, &prog)) {
    fprintf(stderr, "error: filter: %s\n", pcap_geterr(p));
    return 1;
  }
  pcap_freecode(&prog);
  if (pcap_setnonblock(p, 1, err)) {
    fprintf(stderr, "error: %s\n", err);
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);

  /* pcap file header, native byte order */
  put32(0xa1b23c4d); /* nanosecond timestamps */
  uint16_t ver[2] = {2, 4};
  memcpy(out + out_len, ver, 4);
  out_len += 4;
  put32(0);
  put32(0);
  put32((uint32_t)snaplen);
  put32((uint32_t)pcap_datalink(p));
  if (flush_out() < 0) return 0;
  fprintf(stderr, "listening on %s linktype %d\n", argv[1], pcap_datalink(p));

  struct pollfd pfd = {.fd = pcap_get_selectable_fd(p), .events = POLLIN};
  double last = now_s();
  while (!stop) {
    int r = poll(&pfd, 1, 100);
    if (r < 0 && errno != EINTR) break;
    refresh_clock_offset();
    for (;;) {
      int n = pcap_dispatch(p, -1, on_packet, NULL);
      if (n <= 0) break;
    }
    if (out_len > 0 && flush_out() < 0) break;
    if (coalesce_us > 0 && r > 0) {
      struct timespec pause = {coalesce_us / 1000000, (coalesce_us % 1000000) * 1000};
      nanosleep(&pause, NULL);
    }
    double t = now_s();
    if (t - last >= 1.0) {
      struct pcap_stat st;
      if (pcap_stats(p, &st) == 0) {
        fprintf(stderr, "stats received %u dropped %u ifdropped %u\n", st.ps_recv, st.ps_drop, st.ps_ifdrop);
      }
      last = t;
    }
  }
  struct pcap_stat st;
  if (pcap_stats(p, &st) == 0) fprintf(stderr, "stats received %u dropped %u ifdropped %u\n", st.ps_recv, st.ps_drop, st.ps_ifdrop);
  pcap_close(p);
  return 0;
}
