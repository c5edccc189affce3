/* SPDX-License-Identifier: MIT */
/* sock.h: Unix stream sockets for records (listen, systemd activation,
 * reconnecting output) and readiness notification. */
#ifndef MQLB_SOCK_H
#define MQLB_SOCK_H

#include <ev.h>
#include <sys/types.h>

#include "io.h"

/* A listening socket: PATH (mode, stale socket replaced), or the first
 * socket systemd passed (LISTEN_FDS) when path is NULL. -1 with errno. */
int sock_listen(const char *path, mode_t mode);
int sock_systemd_fd(void);
int sock_connect(const char *path);

struct srv;
struct conn {
	struct srv *srv;
	struct in in;
	struct out out;
	struct conn *next;
	uid_t uid;
};
typedef void conn_line_fn(struct conn *c, char *line, size_t n, void *arg);
typedef void conn_fn(struct conn *c, void *arg);

struct srv {
	struct ev_loop *loop;
	ev_io w;
	int fd;
	struct conn *conns;
	conn_line_fn *on_line;
	conn_fn *on_open, *on_close;
	void *arg;
};

/* Accept connections on fd; every line of every peer goes to on_line,
 * which answers on c->out. Peers of another uid (but root) are refused. */
void srv_init(struct srv *s, struct ev_loop *loop, int fd, conn_line_fn *on_line,
	      conn_fn *on_open, conn_fn *on_close, void *arg);
void srv_close(struct srv *s);
/* --listen: serve path (or the socket systemd passed) with on_line; no path
 * and no socket from systemd: nothing. A path that cannot be served is
 * fatal (exit 111). */
void srv_listen(struct srv *s, struct ev_loop *loop, const char *path, mode_t mode,
		conn_line_fn *on_line);
/* For a socket that only answers "stats": 1 if line is that query (the
 * caller writes its "stat" records, then "ok"); 0 for a blank line, or for
 * any other query, which is answered "error unknown-query" here. */
int srv_stats_query(struct conn *c, char *line, size_t n);

/* An output that connects to a Unix socket and connects again when the
 * peer goes away; on_connect lets the producer send its whole state. */
struct outconn {
	struct out out;
	struct ev_loop *loop;
	ev_timer retry;
	const char *path;
	void (*on_connect)(struct outconn *oc, void *arg);
	void *arg;
	int warned;
};
void outconn_init(struct outconn *oc, struct ev_loop *loop, const char *path, size_t hiwat,
		  void (*on_connect)(struct outconn *oc, void *arg), void *arg);

/* Tell whoever waits that we are ready: a newline on fd (then closed) and
 * READY=1 on $NOTIFY_SOCKET. */
void ready_notify(int fd);

#endif
