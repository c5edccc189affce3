/* SPDX-License-Identifier: MIT */
/* io.h: record streams on libev: a line reader that can be paused, and a
 * bounded non-blocking writer that tells its producer to pause when full. */
#ifndef MQLB_IO_H
#define MQLB_IO_H

#include <ev.h>
#include <stddef.h>

struct in;
typedef void in_line_fn(struct in *in, char *line, size_t n, void *arg);
typedef void in_eof_fn(struct in *in, int err, void *arg);

struct in {
	struct ev_loop *loop;
	ev_io w;
	int fd;
	char *buf;
	size_t len, off, cap, max, last;
	unsigned long lineno;
	int paused, eof, skipping;
	in_line_fn *on_line;
	in_eof_fn *on_eof;
	void *arg;
};

/* Read lines of at most max bytes from fd; a longer line is reported on
 * stderr and skipped. */
void in_init(struct in *in, struct ev_loop *loop, int fd, size_t max,
	     in_line_fn *on_line, in_eof_fn *on_eof, void *arg);
void in_pause(struct in *in);
void in_resume(struct in *in);
/* Give back the line just handed out (untouched) to be read again. */
void in_unread(struct in *in);
void in_close(struct in *in);

struct out;
typedef void out_fn(struct out *o, void *arg);

struct out {
	struct ev_loop *loop;
	ev_io w;
	ev_io hup; /* a pipe's reader gone (EPOLLERR), even while nothing is written */
	ev_prepare flusher;
	int fd;
	char *buf;
	size_t len, off, cap, hiwat;
	int nfields, err, was_full;
	out_fn *on_drain; /* below the high-water mark again */
	out_fn *on_error; /* the peer went away (EPIPE) or another error */
	void *arg;
};

/* Buffer records for fd; flush whenever the loop is about to block. */
void out_init(struct out *o, struct ev_loop *loop, int fd, size_t hiwat);
void out_set_fd(struct out *o, int fd);
/* One field, escaped here; fields of a record are joined by spaces. */
void out_field(struct out *o, const void *p, size_t n);
void out_str(struct out *o, const char *s);
void out_ulong(struct out *o, unsigned long v);
/* One field already escaped (passed through from an input record). */
void out_raw(struct out *o, const void *p, size_t n);
void out_end(struct out *o);
/* Append the whole records buffered in from (never flushed itself). */
void out_append(struct out *o, const struct out *from);
/* Write a whole split record's raw fields (pass-through). */
struct rec;
void out_rec(struct out *o, const struct rec *r);
int out_full(const struct out *o);
/* Try to write everything now; returns 0 when empty, 1 when data is left,
 * -1 on error. */
int out_flush(struct out *o);
/* Block until everything is written (shutdown). */
int out_drain_blocking(struct out *o);

/* A "stat NAME VALUE" record, as answered to the stats query. */
void out_stat(struct out *o, const char *name, unsigned long v);

int fd_nonblock(int fd);

#endif
