/* SPDX-License-Identifier: MIT */
/* sock.c: Unix sockets for record streams: listen (or systemd activation),
 * accept peers, reconnect outputs, and readiness notification. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "record.h"
#include "sock.h"

static int fill_addr(struct sockaddr_un *sa, const char *path)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof sa->sun_path) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sa->sun_path, path);
	return 0;
}

int sock_connect(const char *path)
{
	struct sockaddr_un sa;
	int fd;

	if (fill_addr(&sa, path) < 0)
		return -1;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int sock_systemd_fd(void)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");

	if (!pid || !fds || atol(pid) != (long)getpid() || atoi(fds) < 1)
		return -1;
	/* Ours alone: children must not think they were activated too. */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return 3;
}

int sock_listen(const char *path, mode_t mode)
{
	struct sockaddr_un sa;
	mode_t old;
	int fd, rc;

	if (!path)
		return sock_systemd_fd();
	if (fill_addr(&sa, path) < 0)
		return -1;
	fd = sock_connect(path);
	if (fd >= 0) {
		/* Somebody is listening there: never steal a live socket. */
		close(fd);
		errno = EADDRINUSE;
		return -1;
	}
	if (errno == ECONNREFUSED)
		unlink(path); /* stale socket of a dead process */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	/* Create it with the right mode from the start: no window of 0777. */
	old = umask(0777 & ~mode);
	rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
	umask(old);
	if (rc < 0 || chmod(path, mode) < 0 || listen(fd, 64) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static void conn_free(struct conn *c)
{
	struct srv *s = c->srv;

	for (struct conn **p = &s->conns; *p; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	if (s->on_close)
		s->on_close(c, s->arg);
	in_close(&c->in);
	ev_io_stop(s->loop, &c->out.w);
	ev_ref(s->loop);
	ev_prepare_stop(s->loop, &c->out.flusher);
	close(c->in.fd);
	free(c->out.buf);
	free(c);
}

static void conn_line(struct in *in, char *line, size_t n, void *arg)
{
	struct conn *c = arg;

	c->srv->on_line(c, line, n, c->srv->arg);
}

static void conn_eof(struct in *in, int err, void *arg)
{
	struct conn *c = arg;

	/* Answers still buffered go out before the socket closes. */
	out_drain_blocking(&c->out);
	conn_free(c);
}

static void conn_err(struct out *o, void *arg) { conn_free(arg); }

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct srv *s = w->data;
	struct ucred cr;
	socklen_t len = sizeof cr;
	struct conn *c;
	int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0)
		return;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && cr.uid != 0 &&
	    cr.uid != geteuid()) {
		warnl("refused a socket peer of uid %u", (unsigned)cr.uid);
		close(fd);
		return;
	}
	c = calloc(1, sizeof *c);
	if (!c) {
		close(fd);
		return;
	}
	c->srv = s;
	c->uid = cr.uid;
	in_init(&c->in, loop, fd, 64 << 20, conn_line, conn_eof, c);
	out_init(&c->out, loop, fd, 1 << 20);
	c->out.on_error = conn_err;
	c->out.arg = c;
	c->next = s->conns;
	s->conns = c;
	if (s->on_open)
		s->on_open(c, s->arg);
}

void srv_init(struct srv *s, struct ev_loop *loop, int fd, conn_line_fn *on_line,
	      conn_fn *on_open, conn_fn *on_close, void *arg)
{
	memset(s, 0, sizeof *s);
	s->loop = loop;
	s->fd = fd;
	s->on_line = on_line;
	s->on_open = on_open;
	s->on_close = on_close;
	s->arg = arg;
	fd_nonblock(fd);
	ev_io_init(&s->w, accept_cb, fd, EV_READ);
	s->w.data = s;
	ev_io_start(loop, &s->w);
}

void srv_close(struct srv *s)
{
	ev_io_stop(s->loop, &s->w);
	while (s->conns)
		conn_free(s->conns);
	close(s->fd);
}

static void outconn_try(struct outconn *oc);

static void outconn_retry_cb(struct ev_loop *loop, ev_timer *w, int revents) { outconn_try(w->data); }

static void outconn_err(struct out *o, void *arg)
{
	struct outconn *oc = arg;

	warnl("output %s: %s; reconnecting", oc->path, strerror(o->err));
	close(o->fd);
	out_set_fd(o, -1);
	ev_timer_set(&oc->retry, 0.2, 0);
	ev_timer_start(oc->loop, &oc->retry);
}

static void outconn_try(struct outconn *oc)
{
	int fd = sock_connect(oc->path);

	if (fd < 0) {
		if (!oc->warned++)
			warnl("output %s: %s; will keep trying", oc->path, strerror(errno));
		ev_timer_set(&oc->retry, 0.2, 0);
		ev_timer_start(oc->loop, &oc->retry);
		return;
	}
	oc->warned = 0;
	out_set_fd(&oc->out, fd);
	/* A new peer knows nothing: drop stale bytes, let the producer resend. */
	oc->out.off = oc->out.len = 0;
	oc->out.nfields = 0;
	if (oc->on_connect)
		oc->on_connect(oc, oc->arg);
}

void outconn_init(struct outconn *oc, struct ev_loop *loop, const char *path, size_t hiwat,
		  void (*on_connect)(struct outconn *oc, void *arg), void *arg)
{
	memset(oc, 0, sizeof *oc);
	oc->loop = loop;
	oc->path = path;
	oc->on_connect = on_connect;
	oc->arg = arg;
	out_init(&oc->out, loop, -1, hiwat);
	oc->out.on_error = outconn_err;
	oc->out.arg = oc;
	ev_timer_init(&oc->retry, outconn_retry_cb, 0, 0);
	oc->retry.data = oc;
	outconn_try(oc);
}

void ready_notify(int fd)
{
	const char *ns = getenv("NOTIFY_SOCKET");

	if (fd >= 0) {
		if (write(fd, "\n", 1) < 0)
			warnl("--ready-fd %d: %s", fd, strerror(errno));
		close(fd);
	}
	if (ns && (*ns == '/' || *ns == '@')) {
		struct sockaddr_un sa;
		int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		socklen_t len;

		if (s < 0 || fill_addr(&sa, ns) < 0) {
			if (s >= 0)
				close(s);
			return;
		}
		if (*ns == '@')
			sa.sun_path[0] = '\0'; /* abstract namespace */
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(ns));
		if (sendto(s, "READY=1", 7, MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
			warnl("NOTIFY_SOCKET: %s", strerror(errno));
		close(s);
	}
}

int srv_stats_query(struct conn *c, char *line, size_t n)
{
	struct rec r;

	if (rec_split(line, n, &r) != 0)
		return 0;
	if (rec_is(&r, 0, "stats"))
		return 1;
	out_str(&c->out, "error");
	out_str(&c->out, "unknown-query");
	out_end(&c->out);
	return 0;
}

void srv_listen(struct srv *s, struct ev_loop *loop, const char *path, mode_t mode,
		conn_line_fn *on_line)
{
	int fd = sock_listen(path, mode);

	if (path && fd < 0)
		die(EXIT_SYSERR, "--listen %s: %s", path, strerror(errno));
	if (fd >= 0)
		srv_init(s, loop, fd, on_line, NULL, NULL, NULL);
}
