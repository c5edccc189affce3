/* SPDX-License-Identifier: MIT */
/* mqlb-connbench: MQTT connections per second (CONNECT, CONNACK, DISCONNECT
 * by many parallel clients) and messages per second (publishers through an
 * address, subscribers counting) on raw sockets in one libev loop; the load
 * generator of contrib/bench/netns-lb.sh. conn's clients save the segments a
 * careful client saves (the handshake's ACK, the FIN's own); --plain does not. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "log.h"
#include "opt.h"

static const char usage[] =
	"usage: mqlb-connbench conn [-v] [--quiet] [-h host[,host...]] [-p port]\n"
	"                       [--parallel n] [--duration seconds] [--plain]\n"
	"       mqlb-connbench msg [-v] [--quiet] [-h host[,host...]] [-p port] [-q 0|1]\n"
	"                      [--publishers n] [--window n] [--size bytes]\n"
	"                      [--duration seconds] --sub host[,host...] [--sub-source addr]\n";

#define MAXSUB 16

static struct {
	int parallel, publishers, window, nsub, plain;
	long size;
	double duration;
	const char *sub[MAXSUB], *subsrc;
	char subbuf[512];
} cf = { .parallel = 64, .publishers = 24, .window = 16, .size = 64, .duration = 10 };

static struct ev_loop *loop;
/* The addresses connected to: one, or several in turn (a connection, a
 * publisher each), as a reference without a balancer. */
static struct sockaddr_storage dst[MAXSUB];
static socklen_t dstlen[MAXSUB];
static int ndst;
static int port, qos;
static double t_start, t_end; /* the measuring window, ev_now */

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* host's first address, IPv4 or IPv6, with the port. */
static void resolve(const char *host, struct sockaddr_storage *ss, socklen_t *len)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	int e;

	if ((e = getaddrinfo(host, NULL, &hints, &ai)))
		opt_usage_error("-h: \"%s\": %s", host, gai_strerror(e));
	memset(ss, 0, sizeof *ss);
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

/* -h host[,host...] */
static void resolve_all(const char *hosts)
{
	char buf[512], *save = NULL, *tok;

	if (strlen(hosts) >= sizeof buf)
		opt_usage_error("-h: list too long");
	strcpy(buf, hosts);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (ndst == MAXSUB)
			opt_usage_error("-h: at most %d hosts", MAXSUB);
		resolve(tok, &dst[ndst], &dstlen[ndst]);
		ndst++;
	}
	if (!ndst)
		opt_usage_error("-h: no host");
}

/* A non-blocking TCP socket with Nagle off, bound to src if given,
 * connect started. With lean, the ACK that ends the handshake waits (up
 * to the kernel's 200 ms) for the first data written, which it rides on,
 * as HAProxy's tcp-smart-connect does: an MQTT client speaks first. */
static int dial(const struct sockaddr_storage *ss, socklen_t len, const char *src, int lean)
{
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1,
	    zero = 0;

	if (fd < 0)
		die(EXIT_SYSERR, "socket: %s", strerror(errno));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (lean && setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero) < 0)
		die(EXIT_SYSERR, "TCP_QUICKACK: %s", strerror(errno));
	if (src) {
		struct sockaddr_storage sa;
		socklen_t sl;
		int p = port;

		port = 0;
		resolve(src, &sa, &sl);
		port = p;
		if (bind(fd, (struct sockaddr *)&sa, sl) < 0)
			die(EXIT_SYSERR, "bind %s: %s", src, strerror(errno));
	}
	if (connect(fd, (const struct sockaddr *)ss, len) < 0 && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	return fd;
}

/* MQTT 3.1.1 CONNECT, clean session, no keepalive (no PINGREQ to answer).
 * An empty id lets the broker assign one. */
static size_t connect_pkt(unsigned char *b, const char *id)
{
	size_t idl = strlen(id), n = 0;

	b[n++] = 0x10;
	b[n++] = (unsigned char)(10 + 2 + idl);
	memcpy(b + n, "\0\4MQTT\4\2\0\0", 10);
	n += 10;
	b[n++] = (unsigned char)(idl >> 8);
	b[n++] = (unsigned char)idl;
	memcpy(b + n, id, idl);
	return n + idl;
}

static size_t varint(unsigned char *b, size_t v)
{
	size_t n = 0;

	do {
		b[n] = v % 128;
		v /= 128;
		if (v)
			b[n] |= 128;
		n++;
	} while (v);
	return n;
}

/* Length of the first whole packet in b[0..len), or 0 if incomplete. */
static size_t packet_len(const unsigned char *b, size_t len)
{
	size_t v = 0, mul = 1, i;

	for (i = 1; i < len && i <= 4; i++) {
		v += (b[i] & 127) * mul;
		mul *= 128;
		if (!(b[i] & 128))
			return i + 1 + v <= len ? i + 1 + v : 0;
	}
	if (i > 4)
		die(EXIT_UNREACH, "malformed packet from the broker");
	return 0;
}

/* Blocking exchange for setup: write pkt, read until a packet of type want. */
static void exchange(int fd, const unsigned char *pkt, size_t n, unsigned want, const char *what)
{
	unsigned char b[64];
	size_t have = 0, l;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	double until = mono() + 10;
	ssize_t r;

	if (write(fd, pkt, n) != (ssize_t)n)
		die(EXIT_UNREACH, "%s: write: %s", what, strerror(errno));
	for (;;) {
		if (mono() > until || poll(&p, 1, 1000) < 0)
			die(EXIT_UNREACH, "%s: no answer", what);
		r = read(fd, b + have, sizeof b - have);
		if (r == 0)
			die(EXIT_UNREACH, "%s: closed by the broker", what);
		if (r < 0 && errno != EAGAIN && errno != EINTR)
			die(EXIT_UNREACH, "%s: %s", what, strerror(errno));
		if (r > 0)
			have += (size_t)r;
		if ((l = packet_len(b, have))) {
			if (b[0] >> 4 != want)
				die(EXIT_UNREACH, "%s: unexpected packet type %u", what, b[0] >> 4);
			if (want == 2 && b[3] != 0)
				die(EXIT_UNREACH, "%s: CONNACK refused (%u)", what, b[3]);
			return;
		}
	}
}

static int dial_wait(const struct sockaddr_storage *ss, socklen_t len, const char *src,
		     const char *what)
{
	int fd = dial(ss, len, src, 0), err = 0;
	socklen_t el = sizeof err;
	struct pollfd p = { .events = POLLOUT };

	if (fd < 0)
		die(EXIT_UNREACH, "%s: connect: %s", what, strerror(errno));
	p.fd = fd;
	if (poll(&p, 1, 10000) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err)
		die(EXIT_UNREACH, "%s: connect: %s", what, err ? strerror(err) : "timed out");
	return fd;
}

/* --- conn: connection cycles ---------------------------------------------- */

struct cslot {
	ev_io io;
	ev_timer retry;
	double t0;
	int connected;
	size_t have;
	unsigned char b[8];
};

static struct {
	unsigned long done, errors, unfinished;
	double *lat;
	size_t nlat, cap;
} cs;

static void cslot_start(struct cslot *s);

static void cslot_end(struct cslot *s, int err)
{
	ev_io_stop(loop, &s->io);
	close(s->io.fd);
	if (err && mono() < t_end)
		cs.errors++;
	if (mono() < t_end)
		cslot_start(s);
}

static void cslot_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct cslot *s = (struct cslot *)w;
	static const unsigned char disconnect[2] = { 0xe0, 0 };
	unsigned char pkt[32];
	int err = 0;
	socklen_t el = sizeof err;
	ssize_t r;
	double now;

	(void)revents;
	if (!s->connected) {
		if (getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
			cslot_end(s, 1);
			return;
		}
		s->connected = 1;
		size_t n = connect_pkt(pkt, "");
		if (write(w->fd, pkt, n) != (ssize_t)n) {
			cslot_end(s, 1);
			return;
		}
		ev_io_stop(l, w);
		ev_io_set(w, w->fd, EV_READ);
		ev_io_start(l, w);
		return;
	}
	r = read(w->fd, s->b + s->have, 4 - s->have);
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (r <= 0) {
		cslot_end(s, 1);
		return;
	}
	s->have += (size_t)r;
	if (s->have < 4)
		return;
	if (s->b[0] != 0x20 || s->b[3] != 0) {
		cslot_end(s, 1);
		return;
	}
	now = mono();
	if (now >= t_start && now < t_end) {
		cs.done++;
		if (cs.nlat == cs.cap) {
			cs.cap = cs.cap ? 2 * cs.cap : 65536;
			if (!(cs.lat = realloc(cs.lat, cs.cap * sizeof *cs.lat)))
				die(EXIT_SYSERR, "out of memory");
		}
		cs.lat[cs.nlat++] = (now - s->t0) * 1e3;
	}
	/* DISCONNECT, then close: the client ends the session, as a polite
	 * short-lived client does. Lean, the DISCONNECT is held back
	 * (MSG_MORE) so that the close puts the FIN in its segment. */
	if (send(w->fd, disconnect, sizeof disconnect, cf.plain ? 0 : MSG_MORE) < 0)
		cs.errors++;
	cslot_end(s, 0);
}

static void cslot_retry(struct ev_loop *l, ev_timer *w, int revents)
{
	struct cslot *s = (struct cslot *)((char *)w - offsetof(struct cslot, retry));

	(void)l;
	(void)revents;
	if (mono() < t_end)
		cslot_start(s);
}

static void cslot_start(struct cslot *s)
{
	static unsigned next; /* the destination of the next connection, in turn */
	int fd, d = (int)(next++ % (unsigned)ndst);

	memset(s, 0, sizeof *s);
	s->t0 = mono();

	if ((fd = dial(&dst[d], dstlen[d], NULL, !cf.plain)) < 0) {
		/* EADDRNOTAVAIL and the like: count it, try again in 10 ms. */
		cs.errors++;
		ev_timer_init(&s->retry, cslot_retry, 0.01, 0);
		ev_timer_start(loop, &s->retry);
		return;
	}
	ev_io_init(&s->io, cslot_cb, fd, EV_WRITE);
	ev_io_start(loop, &s->io);
}

static int dcmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double pct(double p)
{
	size_t i;

	if (!cs.nlat)
		return 0;
	i = (size_t)(p * (double)(cs.nlat - 1) + 0.5);
	return cs.lat[i];
}

static void stop_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(l, EVBREAK_ALL);
}

static void run_conn(void)
{
	struct cslot *slots = calloc((size_t)cf.parallel, sizeof *slots);
	ev_timer stop;
	int i;

	if (!slots)
		die(EXIT_SYSERR, "out of memory");
	t_start = mono();
	t_end = t_start + cf.duration;
	for (i = 0; i < cf.parallel; i++)
		cslot_start(&slots[i]);
	ev_timer_init(&stop, stop_cb, cf.duration, 0);
	ev_timer_start(loop, &stop);
	ev_run(loop, 0);
	for (i = 0; i < cf.parallel; i++) {
		ev_timer_stop(loop, &slots[i].retry);
		if (ev_is_active(&slots[i].io)) {
			cs.unfinished++;
			ev_io_stop(loop, &slots[i].io);
			close(slots[i].io.fd);
		}
	}
	qsort(cs.lat, cs.nlat, sizeof *cs.lat, dcmp);
	printf("conn client=%s done=%lu secs=%.2f conn_s=%.1f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f "
	       "errors=%lu unfinished=%lu\n",
	       cf.plain ? "plain" : "lean", cs.done, cf.duration, cs.done / cf.duration, pct(0.5),
	       pct(0.99), pct(1), cs.errors, cs.unfinished);
	free(slots);
	free(cs.lat);
}

/* --- msg: publishers through the address, subscribers counting ----------- */

struct peer {
	ev_io io;
	int sub; /* subscriber index, or -1 for a publisher */
	size_t have;
	unsigned char in[65536];
	unsigned char *out;
	size_t outlen, outoff, outcap;
	unsigned outstanding;
	uint16_t mid;
};

static struct {
	unsigned long sent, acked, delivered, per_sub[MAXSUB];
	int stopping;
} ms;
/* bench/m/PID: a backlog left by an earlier run (QoS 0 floods fill socket
 * buffers) is not counted in this one. */
static char topic[64];
static unsigned char *pubpkt;
static size_t pubpktlen, midoff;

static void peer_want(struct peer *p)
{
	/* A QoS 0 publisher writes whenever the socket takes more. */
	int more = p->sub < 0 && !qos && !ms.stopping;
	int ev = EV_READ | (p->outoff < p->outlen || more ? EV_WRITE : 0);

	if ((p->io.events & (EV_READ | EV_WRITE)) != ev) {
		ev_io_stop(loop, &p->io);
		ev_io_set(&p->io, p->io.fd, ev);
		ev_io_start(loop, &p->io);
	}
}

static void peer_flush(struct peer *p)
{
	ssize_t r;

	while (p->outoff < p->outlen) {
		r = write(p->io.fd, p->out + p->outoff, p->outlen - p->outoff);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			break;
		if (r < 0)
			die(EXIT_UNREACH, "publisher: write: %s", strerror(errno));
		p->outoff += (size_t)r;
	}
	if (p->outoff == p->outlen)
		p->outoff = p->outlen = 0;
	peer_want(p);
}

/* Queue publishes: QoS 1 up to the window of unacknowledged ones; QoS 0
 * a window's worth whenever the socket took the last. */
static void pub_fill(struct peer *p)
{
	double now = mono();
	size_t full = (size_t)cf.window * pubpktlen;

	if (ms.stopping)
		return;

	while (qos ? p->outstanding < (unsigned)cf.window : p->outlen < full) {
		if (p->outlen + pubpktlen > p->outcap) {
			p->outcap = p->outcap ? 2 * p->outcap : (size_t)cf.window * pubpktlen;
			if (!(p->out = realloc(p->out, p->outcap)))
				die(EXIT_SYSERR, "out of memory");
		}
		memcpy(p->out + p->outlen, pubpkt, pubpktlen);
		if (qos) {
			if (++p->mid == 0)
				p->mid = 1;
			p->out[p->outlen + midoff] = (unsigned char)(p->mid >> 8);
			p->out[p->outlen + midoff + 1] = (unsigned char)p->mid;
			p->outstanding++;
		}
		p->outlen += pubpktlen;
		if (now >= t_start && now < t_end)
			ms.sent++;
	}
	peer_flush(p);
}

static void peer_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct peer *p = (struct peer *)w;
	size_t n, off = 0;
	ssize_t r;
	double now;

	(void)l;
	if (revents & EV_WRITE) {
		if (p->sub < 0 && !qos && p->outlen == 0)
			pub_fill(p);
		else
			peer_flush(p);
	}
	if (!(revents & EV_READ))
		return;
	r = read(w->fd, p->in + p->have, sizeof p->in - p->have);
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (r <= 0)
		die(EXIT_UNREACH, "%s: connection lost: %s",
		    p->sub < 0 ? "publisher" : "subscriber", r ? strerror(errno) : "closed");
	p->have += (size_t)r;
	now = mono();
	while ((n = packet_len(p->in + off, p->have - off))) {
		unsigned type = p->in[off] >> 4;

		if (type == 4 && p->sub < 0) {
			p->outstanding--;
			if (now >= t_start && now < t_end)
				ms.acked++;
		} else if (type == 3 && p->sub >= 0 && now >= t_start && now < t_end) {
			ms.delivered++;
			ms.per_sub[p->sub]++;
		}
		off += n;
		if (off == p->have)
			break;
	}
	if (off == 0 && p->have == sizeof p->in)
		die(EXIT_UNREACH, "packet larger than %zu bytes", sizeof p->in);
	memmove(p->in, p->in + off, p->have - off);
	p->have -= off;
	if (p->sub < 0 && qos)
		pub_fill(p);
}

static void peer_connect(struct peer *p, const struct sockaddr_storage *ss, socklen_t len,
			 const char *src, const char *id, const char *what)
{
	unsigned char pkt[300];
	int fd = dial_wait(ss, len, src, what);

	exchange(fd, pkt, connect_pkt(pkt, id), 2, what);
	ev_io_init(&p->io, peer_cb, fd, EV_READ);
}

static void make_pubpkt(void)
{
	size_t tl = strlen(topic), rl = 2 + tl + (qos ? 2 : 0) + (size_t)cf.size, n = 0;

	if (!(pubpkt = malloc(rl + 8)))
		die(EXIT_SYSERR, "out of memory");
	pubpkt[n++] = qos ? 0x32 : 0x30;
	n += varint(pubpkt + n, rl);
	pubpkt[n++] = 0;
	pubpkt[n++] = (unsigned char)tl;
	memcpy(pubpkt + n, topic, tl);
	n += tl;
	midoff = n;
	if (qos) {
		pubpkt[n++] = 0;
		pubpkt[n++] = 1;
	}
	memset(pubpkt + n, 'x', (size_t)cf.size);
	pubpktlen = n + (size_t)cf.size;
}

static void run_msg(void)
{
	struct peer *subs = calloc((size_t)cf.nsub, sizeof *subs);
	struct peer *pubs = calloc((size_t)cf.publishers, sizeof *pubs);
	unsigned char pkt[64];
	char id[64];
	ev_timer stop;
	int i;
	double secs;

	if (!subs || !pubs)
		die(EXIT_SYSERR, "out of memory");
	snprintf(topic, sizeof topic, "bench/m/%d", (int)getpid());
	for (i = 0; i < cf.nsub; i++) {
		struct sockaddr_storage ss;
		socklen_t len;
		size_t n = 0;

		resolve(cf.sub[i], &ss, &len);
		snprintf(id, sizeof id, "connbench-sub%d-%d", i, (int)getpid());
		peer_connect(&subs[i], &ss, len, cf.subsrc, id, "subscriber");
		subs[i].sub = i;
		/* SUBSCRIBE bench/m, QoS 0: the subscriber only counts. */
		pkt[n++] = 0x82;
		pkt[n++] = (unsigned char)(2 + 2 + strlen(topic) + 1);
		pkt[n++] = 0;
		pkt[n++] = 1;
		pkt[n++] = 0;
		pkt[n++] = (unsigned char)strlen(topic);
		memcpy(pkt + n, topic, strlen(topic));
		n += strlen(topic);
		pkt[n++] = 0;
		exchange(subs[i].io.fd, pkt, n, 9, "subscriber");
		ev_io_start(loop, &subs[i].io);
	}
	make_pubpkt();
	for (i = 0; i < cf.publishers; i++) {
		snprintf(id, sizeof id, "connbench-pub%d-%d", i, (int)getpid());
		peer_connect(&pubs[i], &dst[i % ndst], dstlen[i % ndst], NULL, id, "publisher");
		pubs[i].sub = -1;
		ev_io_start(loop, &pubs[i].io);
	}
	t_start = mono();
	t_end = t_start + cf.duration;
	for (i = 0; i < cf.publishers; i++)
		pub_fill(&pubs[i]);
	ev_timer_init(&stop, stop_cb, cf.duration, 0);
	ev_timer_start(loop, &stop);
	ev_run(loop, 0);
	ms.stopping = 1;
	secs = cf.duration;
	printf("msg qos=%d publishers=%d secs=%.2f sent_s=%.1f acked_s=%.1f delivered_s=%.1f",
	       qos, cf.publishers, secs, ms.sent / secs, qos ? ms.acked / secs : 0.0,
	       ms.delivered / secs);
	printf(" per_sub=");
	for (i = 0; i < cf.nsub; i++)
		printf("%s%lu", i ? "," : "", ms.per_sub[i]);
	printf("\n");
	for (i = 0; i < cf.publishers; i++)
		close(pubs[i].io.fd), free(pubs[i].out);
	for (i = 0; i < cf.nsub; i++)
		close(subs[i].io.fd);
	free(pubs);
	free(subs);
	free(pubpkt);
}

enum { O_PARALLEL = 256, O_PUBLISHERS, O_WINDOW, O_SIZE, O_DURATION, O_SUB, O_SUBSRC, O_PLAIN };
static const struct option longopts[] = {
	{ "parallel", required_argument, NULL, O_PARALLEL },
	{ "publishers", required_argument, NULL, O_PUBLISHERS },
	{ "window", required_argument, NULL, O_WINDOW },
	{ "size", required_argument, NULL, O_SIZE },
	{ "duration", required_argument, NULL, O_DURATION },
	{ "sub", required_argument, NULL, O_SUB },
	{ "sub-source", required_argument, NULL, O_SUBSRC },
	{ "plain", no_argument, NULL, O_PLAIN },
	{ 0 },
};

static void opt(int c, const char *arg)
{
	char *save = NULL, *tok;

	switch (c) {
	case O_PARALLEL: cf.parallel = (int)opt_long("--parallel", arg, 1, 100000); break;
	case O_PUBLISHERS: cf.publishers = (int)opt_long("--publishers", arg, 1, 10000); break;
	case O_WINDOW: cf.window = (int)opt_long("--window", arg, 1, 60000); break;
	case O_SIZE: cf.size = opt_long("--size", arg, 0, 60000); break;
	case O_DURATION: cf.duration = opt_secs("--duration", arg, 0.1, 3600); break;
	case O_SUBSRC: cf.subsrc = arg; break;
	case O_PLAIN: cf.plain = 1; break;
	case O_SUB:
		if (strlen(arg) >= sizeof cf.subbuf)
			opt_usage_error("--sub: list too long");
		strcpy(cf.subbuf, arg);
		cf.nsub = 0;
		for (tok = strtok_r(cf.subbuf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			if (cf.nsub == MAXSUB)
				opt_usage_error("--sub: at most %d hosts", MAXSUB);
			cf.sub[cf.nsub++] = tok;
		}
		break;
	}
}

int main(int argc, char **argv)
{
	struct conf c = { 0 };
	int i;

	log_init("mqlb-connbench");
	i = opt_parse(&argc, &argv, OPT_MQTT | OPT_QOS, NULL, longopts, opt, usage, &c);
	if (argc - i != 1 || (strcmp(argv[i], "conn") && strcmp(argv[i], "msg")))
		opt_usage_error("expected one operand, conn or msg");
	port = c.mq.port;
	qos = c.mq.qos;
	if (qos < 0 || qos > 1)
		opt_usage_error("-q: 0 or 1");
	resolve_all(c.mq.host ? c.mq.host : "127.0.0.1");
	signal(SIGPIPE, SIG_IGN);
	loop = ev_default_loop(0);
	if (!strcmp(argv[i], "conn")) {
		run_conn();
	} else {
		if (!cf.nsub)
			opt_usage_error("msg needs --sub");
		if (cf.plain)
			opt_usage_error("--plain: only for conn");
		run_msg();
	}
	return EXIT_OK;
}
