/* SPDX-License-Identifier: MIT */
/* probe.c: one active MQTT health check on the libev loop, raw sockets: a
 * fresh TCP connection, CONNECT (3.1.1, clean session) until CONNACK, one
 * PINGREQ until PINGRESP, then DISCONNECT; all within one timeout. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "health.h"
#include "log.h"

enum { P_IDLE, P_CONNECTING, P_CONNACK, P_PINGRESP };

static const char *const phase_name[] = { "idle", "TCP connect", "CONNACK", "PINGRESP" };

static void finish(struct probe *p, const char *err)
{
	ev_io_stop(hloop, &p->io);
	ev_timer_stop(hloop, &p->to);
	if (p->fd >= 0) {
		if (!err) {
			static const unsigned char disc[2] = { 0xe0, 0x00 };

			/* A polite goodbye, so the broker logs no protocol error. */
			(void)!send(p->fd, disc, sizeof disc, MSG_NOSIGNAL | MSG_DONTWAIT);
		}
		close(p->fd);
	}
	p->fd = -1;
	p->phase = P_IDLE;
	p->done(p, err, p->arg);
}

/* CONNECT: protocol "MQTT" level 4, clean session, our credentials. */
static size_t build_connect(unsigned char *b, size_t cap)
{
	static unsigned long seq;
	char id[64];
	const char *user = H.cf.mq.user, *pass = H.cf.mq.pass;
	size_t idl, n = 0, rem;
	unsigned char flags = 0x02;

	snprintf(id, sizeof id, "mqlb-health-%ld-%lu", (long)getpid(), ++seq);
	idl = strlen(id);
	rem = 10 + 2 + idl;
	if (user) {
		flags |= 0x80;
		rem += 2 + strlen(user);
		if (pass) {
			flags |= 0x40;
			rem += 2 + strlen(pass);
		}
	}
	if (rem + 5 > cap)
		return 0;
	b[n++] = 0x10;
	do {
		b[n] = rem & 0x7f;
		rem >>= 7;
		if (rem)
			b[n] |= 0x80;
		n++;
	} while (rem);
	memcpy(b + n, "\0\4MQTT\4", 7);
	n += 7;
	b[n++] = flags;
	b[n++] = 0;
	b[n++] = 30; /* keepalive: longer than any probe */
#define PUT_STR(s, l)                      \
	do {                               \
		b[n++] = (unsigned char)((l) >> 8); \
		b[n++] = (unsigned char)(l);  \
		memcpy(b + n, (s), (l));   \
		n += (l);                  \
	} while (0)
	PUT_STR(id, idl);
	if (user)
		PUT_STR(user, strlen(user));
	if (user && pass)
		PUT_STR(pass, strlen(pass));
#undef PUT_STR
	return n;
}

static int send_all(struct probe *p, const unsigned char *b, size_t n)
{
	/* A fresh socket takes a few hundred bytes without blocking. */
	ssize_t w = send(p->fd, b, n, MSG_NOSIGNAL);

	return w == (ssize_t)n ? 0 : -1;
}

static const char *step(struct probe *p, int revents)
{
	static char err[128];
	unsigned char pkt[1024];
	size_t need;
	ssize_t r;

	if (p->phase == P_CONNECTING) {
		int e = 0;
		socklen_t l = sizeof e;

		if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &e, &l) < 0)
			e = errno;
		if (e) {
			snprintf(err, sizeof err, "connect: %s", strerror(e));
			return err;
		}
		need = build_connect(pkt, sizeof pkt);
		if (!need)
			return "credentials too long for the probe";
		if (send_all(p, pkt, need) < 0)
			return "cannot send CONNECT";
		p->phase = P_CONNACK;
		p->got = 0;
		ev_io_stop(hloop, &p->io);
		ev_io_set(&p->io, p->fd, EV_READ);
		ev_io_start(hloop, &p->io);
		return NULL;
	}
	need = p->phase == P_CONNACK ? 4 : 2;
	r = recv(p->fd, p->buf + p->got, need - p->got, 0);
	if (r == 0)
		return p->phase == P_CONNACK ? "closed before CONNACK" : "closed before PINGRESP";
	if (r < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return NULL;
		snprintf(err, sizeof err, "read: %s", strerror(errno));
		return err;
	}
	p->got += (size_t)r;
	if (p->got < need)
		return NULL;
	if (p->phase == P_CONNACK) {
		static const unsigned char ping[2] = { 0xc0, 0x00 };

		if (p->buf[0] != 0x20 || p->buf[1] != 0x02)
			return "not an MQTT CONNACK";
		if (p->buf[3] != 0) {
			snprintf(err, sizeof err, "CONNECT refused, return code %u", p->buf[3]);
			return err;
		}
		p->tping = ev_time();
		if (send_all(p, ping, sizeof ping) < 0)
			return "cannot send PINGREQ";
		p->phase = P_PINGRESP;
		p->got = 0;
		return NULL;
	}
	if (p->buf[0] != 0xd0 || p->buf[1] != 0x00)
		return "not an MQTT PINGRESP";
	p->rtt = ev_time() - p->tping;
	p->total = ev_time() - p->t0;
	p->phase = P_IDLE;
	return NULL;
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct probe *p = w->data;
	const char *err = step(p, revents);

	if (err || p->phase == P_IDLE)
		finish(p, err);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct probe *p = w->data;
	static char err[64];

	snprintf(err, sizeof err, "no %s within %gs", phase_name[p->phase], p->to.repeat);
	finish(p, err);
}

void probe_start(struct probe *p, const struct sockaddr *sa, socklen_t len, double timeout,
		 probe_fn *done, void *arg)
{
	static char err[128];

	p->done = done;
	p->arg = arg;
	p->t0 = ev_time();
	p->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (p->fd < 0) {
		snprintf(err, sizeof err, "socket: %s", strerror(errno));
		p->phase = P_CONNECTING;
		finish(p, err);
		return;
	}
	ev_io_init(&p->io, io_cb, p->fd, EV_WRITE);
	p->io.data = p;
	ev_timer_init(&p->to, timeout_cb, timeout, timeout);
	p->to.data = p;
	p->phase = P_CONNECTING;
	if (connect(p->fd, sa, len) < 0 && errno != EINPROGRESS) {
		snprintf(err, sizeof err, "connect: %s", strerror(errno));
		finish(p, err);
		return;
	}
	ev_io_start(hloop, &p->io);
	ev_timer_start(hloop, &p->to);
}

int probe_busy(const struct probe *p) { return p->phase != P_IDLE; }

void probe_cancel(struct probe *p)
{
	if (!probe_busy(p))
		return;
	ev_io_stop(hloop, &p->io);
	ev_timer_stop(hloop, &p->to);
	close(p->fd);
	p->fd = -1;
	p->phase = P_IDLE;
}
