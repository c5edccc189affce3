/* SPDX-License-Identifier: MIT */
/* io.c: line input and buffered record output on a libev loop. Output is
 * flushed when the loop would block, so a burst becomes one write. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collect.h"
#include "io.h"
#include "log.h"
#include "record.h"

int fd_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n);

	if (!q)
		die(EXIT_SYSERR, "out of memory (%zu bytes)", n);
	return q;
}

/* Hand every complete line in the buffer to the callback, stopping as soon
 * as the consumer pauses us. */
static void in_lines(struct in *in)
{
	while (!in->paused && in->off < in->len) {
		char *s = in->buf + in->off;
		char *nl = memchr(s, '\n', in->len - in->off);
		size_t n;

		if (!nl)
			break;
		n = (size_t)(nl - s);
		in->last = in->off;
		in->off += n + 1;
		in->lineno++;
		collect_note(1);
		in->on_line(in, s, n, in->arg);
	}
	if (in->off == in->len)
		in->off = in->len = 0;
}

static void in_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct in *in = w->data;
	ssize_t r;

	in_lines(in);
	if (in->paused)
		return;
	if (in->off > 0) {
		memmove(in->buf, in->buf + in->off, in->len - in->off);
		in->len -= in->off;
		in->off = 0;
	}
	if (in->len == in->cap) {
		if (in->cap >= in->max) {
			/* Keep the stream in step: drop this line's bytes up to
			 * its newline, and say so. */
			warnl("line %lu: longer than %zu bytes, skipped", in->lineno + 1, in->max);
			in->skipping = 1;
			in->len = 0;
		} else {
			in->cap = in->cap * 2 > in->max ? in->max : in->cap * 2;
			in->buf = xrealloc(in->buf, in->cap + 1);
		}
	}
	r = read(in->fd, in->buf + in->len, in->cap - in->len);
	if (r < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return;
		in->eof = 1;
		ev_io_stop(loop, w);
		in->on_eof(in, errno, in->arg);
		return;
	}
	if (r == 0) {
		if (in->len > in->off && !in->skipping) {
			/* A last line without its newline still counts. */
			in->buf[in->len++] = '\n';
			in_lines(in);
			if (in->paused)
				return; /* the consumer wants it again later */
		}
		in->len = in->off = 0;
		in->eof = 1;
		ev_io_stop(loop, w);
		in->on_eof(in, 0, in->arg);
		return;
	}
	if (in->skipping) {
		char *nl = memchr(in->buf + in->len, '\n', (size_t)r);

		if (!nl) {
			in->len = 0;
			return;
		}
		in->skipping = 0;
		in->lineno++;
		memmove(in->buf, nl + 1, (size_t)(in->buf + in->len + r - nl - 1));
		in->len = (size_t)(in->buf + in->len + r - nl - 1);
	} else {
		in->len += (size_t)r;
	}
	in_lines(in);
}

void in_init(struct in *in, struct ev_loop *loop, int fd, size_t max,
	     in_line_fn *on_line, in_eof_fn *on_eof, void *arg)
{
	memset(in, 0, sizeof *in);
	in->loop = loop;
	in->fd = fd;
	in->max = max;
	in->cap = 65536 < max ? 65536 : max;
	in->buf = xrealloc(NULL, in->cap + 1);
	in->on_line = on_line;
	in->on_eof = on_eof;
	in->arg = arg;
	/* A resumed reader may call read() with nothing ready. */
	fd_nonblock(fd);
	ev_io_init(&in->w, in_cb, fd, EV_READ);
	in->w.data = in;
	ev_io_start(loop, &in->w);
}

void in_pause(struct in *in)
{
	in->paused = 1;
	ev_io_stop(in->loop, &in->w);
}

void in_resume(struct in *in)
{
	if (!in->paused || in->eof)
		return;
	in->paused = 0;
	ev_io_start(in->loop, &in->w);
	/* Lines already buffered will not make the fd readable again. */
	if (in->len > in->off)
		ev_feed_event(in->loop, &in->w, EV_CUSTOM);
}

void in_unread(struct in *in)
{
	in->off = in->last;
	in->lineno--;
}

void in_close(struct in *in)
{
	ev_io_stop(in->loop, &in->w);
	free(in->buf);
	in->buf = NULL;
}

static void reserve(struct out *o, size_t n)
{
	if (o->len + n <= o->cap)
		return;
	if (o->off > 0) {
		memmove(o->buf, o->buf + o->off, o->len - o->off);
		o->len -= o->off;
		o->off = 0;
		if (o->len + n <= o->cap)
			return;
	}
	while (o->cap < o->len + n)
		o->cap = o->cap ? o->cap * 2 : 65536;
	o->buf = xrealloc(o->buf, o->cap);
}

static void sep(struct out *o)
{
	if (o->nfields++ > 0)
		o->buf[o->len++] = ' ';
}

void out_field(struct out *o, const void *p, size_t n)
{
	reserve(o, rec_escaped_len(p, n) + 1);
	sep(o);
	o->len += rec_escape(o->buf + o->len, p, n, NULL);
}

void out_str(struct out *o, const char *s) { out_field(o, s, strlen(s)); }

void out_ulong(struct out *o, unsigned long v)
{
	char b[24];
	int n = 0;

	do
		b[sizeof b - 1 - n++] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	out_raw(o, b + sizeof b - n, (size_t)n);
}

void out_raw(struct out *o, const void *p, size_t n)
{
	reserve(o, n + 1);
	sep(o);
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

void out_end(struct out *o)
{
	reserve(o, 1);
	o->buf[o->len++] = '\n';
	o->nfields = 0;
	if (o->len - o->off >= o->hiwat)
		o->was_full = 1;
}

void out_append(struct out *o, const struct out *from)
{
	size_t n = from->len - from->off;

	reserve(o, n);
	memcpy(o->buf + o->len, from->buf + from->off, n);
	o->len += n;
	if (o->len - o->off >= o->hiwat)
		o->was_full = 1;
}

void out_rec(struct out *o, const struct rec *r)
{
	for (int i = 0; i < r->nf; i++)
		out_raw(o, r->f[i], r->len[i]);
	out_end(o);
}

void out_stat(struct out *o, const char *name, unsigned long v)
{
	out_raw(o, "stat", 4);
	out_str(o, name);
	out_ulong(o, v);
	out_end(o);
}

int out_full(const struct out *o) { return o->len - o->off >= o->hiwat; }

static void hup_stop(struct out *o)
{
	if (ev_is_active(&o->hup)) {
		ev_ref(o->loop);
		ev_io_stop(o->loop, &o->hup);
	}
}

static void out_failed(struct out *o, int err)
{
	o->err = err;
	o->off = o->len = 0;
	ev_io_stop(o->loop, &o->w);
	hup_stop(o);
	if (o->on_error)
		o->on_error(o, o->arg);
}

int out_flush(struct out *o)
{
	/* Only whole records leave: a partial one waits for its newline. */
	while (o->off < o->len && o->nfields == 0) {
		ssize_t w = write(o->fd, o->buf + o->off, o->len - o->off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				ev_io_start(o->loop, &o->w);
				return 1;
			}
			out_failed(o, errno);
			return -1;
		}
		o->off += (size_t)w;
	}
	if (o->off == o->len)
		o->off = o->len = 0;
	if (o->off == o->len)
		ev_io_stop(o->loop, &o->w);
	if (o->was_full && !out_full(o)) {
		o->was_full = 0;
		if (o->on_drain)
			o->on_drain(o, o->arg);
	}
	return o->off < o->len;
}

static void out_cb(struct ev_loop *loop, ev_io *w, int revents) { out_flush(w->data); }

/* A pipe's write end is never readable: the poller says so only when the
 * reader has gone. Then the output fails as a write would, at once, not at
 * the next record (an idle stage would otherwise outlive its neighbour and
 * keep its spool or socket from the pipeline started again). */
static void hup_cb(struct ev_loop *loop, ev_io *w, int revents) { out_failed(w->data, EPIPE); }

/* Watch fd for its reader's end, if it is a pipe (a tty or socket may be
 * readable for other reasons); the watch keeps no loop running. */
static void hup_watch(struct out *o)
{
	struct stat st;

	hup_stop(o);
	if (o->fd < 0 || fstat(o->fd, &st) < 0 || !S_ISFIFO(st.st_mode))
		return;
	ev_io_set(&o->hup, o->fd, EV_READ);
	ev_io_start(o->loop, &o->hup);
	ev_unref(o->loop);
}

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct out *o = w->data;

	if (o->fd >= 0 && o->len > o->off)
		out_flush(o);
}

void out_init(struct out *o, struct ev_loop *loop, int fd, size_t hiwat)
{
	memset(o, 0, sizeof *o);
	o->loop = loop;
	o->fd = fd;
	o->hiwat = hiwat;
	if (fd >= 0)
		fd_nonblock(fd);
	ev_io_init(&o->w, out_cb, fd, EV_WRITE);
	o->w.data = o;
	ev_init(&o->hup, hup_cb);
	o->hup.data = o;
	hup_watch(o);
	ev_prepare_init(&o->flusher, flush_cb);
	o->flusher.data = o;
	ev_prepare_start(loop, &o->flusher);
	/* Keep the prepare watcher from holding the loop alive by itself. */
	ev_unref(loop);
}

void out_set_fd(struct out *o, int fd)
{
	ev_io_stop(o->loop, &o->w);
	o->fd = fd;
	o->err = 0;
	if (fd >= 0)
		fd_nonblock(fd);
	ev_io_set(&o->w, fd, EV_WRITE);
	hup_watch(o);
}

int out_drain_blocking(struct out *o)
{
	while (o->fd >= 0 && o->off < o->len) {
		struct pollfd p = { .fd = o->fd, .events = POLLOUT };

		if (out_flush(o) <= 0)
			break;
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			return -1;
	}
	return o->err ? -1 : 0;
}
