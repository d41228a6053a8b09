/*
 * tcp-ping: TCP request/response round trips timed with CLOCK_MONOTONIC, for the RTT benchmark.
 *
 * A C client, because a Node client adds 30-40 µs of event-loop time to every round trip and
 * as much jitter: on a LAN path of ~30 µs that would hide what the appliance costs.
 *
 * usage: tcp-ping HOST PORT COUNT SIZE PROTO [WARMUP] [LINGER_MS]
 *   PROTO echo:  send SIZE bytes, wait for the same SIZE bytes back (the lab's echo service);
 *   PROTO redis: send ECHO with a SIZE-byte argument, wait for its bulk reply (redis-server).
 *   WARMUP round trips first, not counted (default 50).
 *   LINGER_MS: after printing the result, keep the connection open that long (the benchmark reads
 *   the server's own view, `ss -ti`, meanwhile), or until standard input closes.
 * stdout: one JSON line: {"count","sizeBytes","rttUs":{min,mean,stdDev,p50,p90,p99,max},
 *   "tcpInfo":{"rttUs","rttVarUs","retransmits"},"samplesUs":[...]}.
 * Exit 2 on bad arguments, 1 on a network error (with a message on stderr).
 * link: -lm
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE 65536
#define MAX_COUNT 1000000

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static long parse_long(const char *s, long lo, long hi, const char *what) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < lo || v > hi) {
    fprintf(stderr, "tcp-ping: %s must be an integer from %ld to %ld, got '%s'\n", what, lo, hi, s);
    exit(2);
  }
  return v;
}

static int send_all(int fd, const char *b, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, b, n, 0);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    b += w;
    n -= (size_t)w;
  }
  return 0;
}

static int recv_exact(int fd, char *b, size_t n) {
  while (n > 0) {
    ssize_t r = recv(fd, b, n, 0);
    if (r == 0) {
      errno = ECONNRESET;
      return -1;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    b += r;
    n -= (size_t)r;
  }
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Nearest-rank quantile of sorted samples. */
static double quantile(const double *s, long n, double q) {
  long rank = (long)ceil(q * (double)n);
  if (rank < 1) rank = 1;
  return s[rank - 1];
}

int main(int argc, char **argv) {
  if (argc < 6 || argc > 8) {
    fprintf(stderr, "usage: tcp-ping HOST PORT COUNT SIZE echo|redis [WARMUP] [LINGER_MS]\n");
    return 2;
  }
  const char *host = argv[1];
  const char *port = argv[2];
  parse_long(port, 1, 65535, "PORT");
  long count = parse_long(argv[3], 1, MAX_COUNT, "COUNT");
  long size = parse_long(argv[4], 1, MAX_SIZE, "SIZE");
  int redis = strcmp(argv[5], "redis") == 0;
  if (!redis && strcmp(argv[5], "echo") != 0) {
    fprintf(stderr, "tcp-ping: PROTO must be echo or redis, got '%s'\n", argv[5]);
    return 2;
  }
  long warmup = argc > 6 ? parse_long(argv[6], 0, MAX_COUNT, "WARMUP") : 50;
  long linger = argc > 7 ? parse_long(argv[7], 0, 600000, "LINGER_MS") : 0;

  struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
  int e = getaddrinfo(host, port, &hints, &ai);
  if (e) {
    fprintf(stderr, "tcp-ping: %s: %s\n", host, gai_strerror(e));
    return 2;
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  /* Every request leaves at once: Nagle would hold none here (one request in flight), but say so. */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
    fprintf(stderr, "tcp-ping: connect %s:%s: %s\n", host, port, strerror(errno));
    return 1;
  }
  freeaddrinfo(ai);

  static char req[MAX_SIZE + 64], want[MAX_SIZE + 64], got[MAX_SIZE + 64];
  size_t req_len, want_len;
  char payload[MAX_SIZE];
  for (long i = 0; i < size; i++) payload[i] = (char)('a' + i % 26);
  if (redis) {
    req_len = (size_t)snprintf(req, sizeof req, "*2\r\n$4\r\nECHO\r\n$%ld\r\n", size);
    memcpy(req + req_len, payload, (size_t)size);
    req_len += (size_t)size;
    memcpy(req + req_len, "\r\n", 2);
    req_len += 2;
    want_len = (size_t)snprintf(want, sizeof want, "$%ld\r\n", size);
    memcpy(want + want_len, payload, (size_t)size);
    want_len += (size_t)size;
    memcpy(want + want_len, "\r\n", 2);
    want_len += 2;
  } else {
    memcpy(req, payload, (size_t)size);
    req_len = (size_t)size;
    memcpy(want, payload, (size_t)size);
    want_len = (size_t)size;
  }

  double *samples = malloc(sizeof(double) * (size_t)count);
  if (!samples) return 1;
  for (long i = -warmup; i < count; i++) {
    double t0 = now_us();
    if (send_all(fd, req, req_len) < 0 || recv_exact(fd, got, want_len) < 0) {
      fprintf(stderr, "tcp-ping: round trip %ld: %s\n", i, strerror(errno));
      return 1;
    }
    double t1 = now_us();
    if (memcmp(got, want, want_len) != 0) {
      fprintf(stderr, "tcp-ping: round trip %ld: unexpected answer\n", i);
      return 1;
    }
    if (i >= 0) samples[i] = t1 - t0;
  }

  struct tcp_info ti;
  socklen_t tl = sizeof ti;
  memset(&ti, 0, sizeof ti);
  getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl);

  double sum = 0;
  for (long i = 0; i < count; i++) sum += samples[i];
  double mean = sum / (double)count, m2 = 0;
  for (long i = 0; i < count; i++) m2 += (samples[i] - mean) * (samples[i] - mean);
  double sd = count > 1 ? sqrt(m2 / (double)(count - 1)) : 0;
  double *sorted = malloc(sizeof(double) * (size_t)count);
  if (!sorted) return 1;
  memcpy(sorted, samples, sizeof(double) * (size_t)count);
  qsort(sorted, (size_t)count, sizeof(double), cmp_double);

  printf("{\"count\":%ld,\"sizeBytes\":%ld,\"rttUs\":{\"min\":%.3f,\"mean\":%.3f,\"stdDev\":%.3f,"
         "\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
         "\"tcpInfo\":{\"rttUs\":%u,\"rttVarUs\":%u,\"retransmits\":%u},\"samplesUs\":[",
         count, size, sorted[0], mean, sd, quantile(sorted, count, 0.5), quantile(sorted, count, 0.9),
         quantile(sorted, count, 0.99), sorted[count - 1], ti.tcpi_rtt, ti.tcpi_rttvar, ti.tcpi_total_retrans);
  for (long i = 0; i < count; i++) printf(i ? ",%.2f" : "%.2f", samples[i]);
  printf("]}\n");
  fflush(stdout);

  if (linger > 0) {
    struct pollfd p = {.fd = 0, .events = POLLIN};
    double until = now_us() + (double)linger * 1000;
    for (;;) {
      double left = until - now_us();
      if (left <= 0) break;
      int r = poll(&p, 1, (int)(left / 1000) + 1);
      if (r > 0) {
        char b[64];
        if (read(0, b, sizeof b) <= 0) break; /* standard input closed: the reader is done */
      }
    }
  }
  close(fd);
  return 0;
}
