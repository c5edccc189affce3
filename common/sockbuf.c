/* SPDX-License-Identifier: MIT */
/* sockbuf.c: read(2), write(2), close(2) and socketpair(2) as libmosquitto
 * sees them, buffering the broker sockets mqtt.c attaches (sockbuf.h). */
#include "config.h"
/* read() and write() are defined here: not the fortified inline ones. */
#undef _FORTIFY_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "log.h"
#include "sockbuf.h"

/* glibc's own entry points, which nothing interposes */
extern ssize_t __read(int fd, void *buf, size_t n);
extern ssize_t __write(int fd, const void *buf, size_t n);
extern int __close(int fd);

#define SB_IN (16 * 1024)
/* Written bytes kept while the socket takes none: past this, a write fails
 * with EAGAIN and libmosquitto keeps the packet in its own queue. */
#define SB_OUT_MAX (4 * 1024 * 1024)
#define SB_CLOSE_WAIT_MS 2000 /* at close, how long what waits may take to go */

struct sb {
	int wakeup; /* libmosquitto's wake-up pair: writes dropped */
	int hold, blocked, err;
	int dry; /* the kernel had no more at the last read: none until sb_readable() */
	size_t in_off, in_len;
	char *out;
	size_t out_off, out_len, out_cap;
	unsigned long sent; /* bytes the kernel took, ever */
	char in[SB_IN];
};

static struct sb **tab;
static int ntab;
static int capturing;

static struct sb *get(int fd)
{
	return fd >= 0 && fd < ntab ? tab[fd] : NULL;
}

static void drop(int fd)
{
	struct sb *b = get(fd);

	if (b) {
		free(b->out);
		free(b);
		tab[fd] = NULL;
	}
}

/* A forked child shares the sockets, not what waits to be written on them:
 * it never writes that, nor reads from the parent's buffers. */
static void forked(void)
{
	tab = NULL;
	ntab = 0;
}

static struct sb *add(int fd)
{
	static int atfork;
	struct sb *b;

	if (fd < 0)
		return NULL;
	if (!atfork && pthread_atfork(NULL, NULL, forked) == 0)
		atfork = 1;
	if (fd >= ntab) {
		int n = fd < 64 ? 64 : fd * 2;
		struct sb **t = realloc(tab, (size_t)n * sizeof *t);

		if (!t)
			die(EXIT_SYSERR, "out of memory");
		memset(t + ntab, 0, (size_t)(n - ntab) * sizeof *t);
		tab = t;
		ntab = n;
	}
	drop(fd);
	if (!(b = tab[fd] = calloc(1, sizeof *b)))
		die(EXIT_SYSERR, "out of memory");
	return b;
}

int sb_active(void)
{
	static int active = -1;

	if (active < 0)
		active = dlsym(RTLD_DEFAULT, "write") == (void *)write &&
			 dlsym(RTLD_DEFAULT, "read") == (void *)read &&
			 dlsym(RTLD_DEFAULT, "close") == (void *)close;
	return active;
}

void sb_attach(int fd)
{
	if (sb_active())
		add(fd);
}

void sb_hold(int fd, int on)
{
	struct sb *b = get(fd);

	if (b)
		b->hold = on;
}

unsigned long sb_sent(int fd)
{
	struct sb *b = get(fd);

	return b ? b->sent : 0;
}

size_t sb_unread(int fd)
{
	struct sb *b = get(fd);

	return b ? b->in_len - b->in_off : 0;
}

void sb_readable(int fd)
{
	struct sb *b = get(fd);

	if (b)
		b->dry = 0;
}

int sb_dry(int fd)
{
	struct sb *b = get(fd);

	return b && b->dry && b->in_off == b->in_len;
}

int sb_blocked(int fd)
{
	struct sb *b = get(fd);

	return b && b->blocked && !b->hold;
}

size_t sb_unsent(int fd)
{
	struct sb *b = get(fd);

	return b ? b->out_len - b->out_off : 0;
}

int sb_flush(int fd)
{
	struct sb *b = get(fd);

	if (!b || b->wakeup || b->hold)
		return 0;
	while (b->out_off < b->out_len) {
		ssize_t w = __write(fd, b->out + b->out_off, b->out_len - b->out_off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			b->blocked = 1;
			return 0;
		}
		if (w < 0) {
			b->err = errno;
			b->out_off = b->out_len = 0;
			return -1;
		}
		b->out_off += (size_t)w;
		b->sent += (unsigned long)w;
	}
	b->out_off = b->out_len = 0;
	b->blocked = 0;
	return 0;
}

void sb_capture_wakeup(int on)
{
	capturing = on;
}

ssize_t read(int fd, void *buf, size_t n)
{
	struct sb *b = get(fd);
	size_t k;

	if (!b || b->wakeup || n == 0)
		return __read(fd, buf, n);
	if (b->in_off == b->in_len) {
		ssize_t r;

		/* A read that did not fill what it asked for emptied the socket;
		 * asking again before it is readable again would say EAGAIN. */
		if (b->dry) {
			errno = EAGAIN;
			return -1;
		}
		if (n >= SB_IN) {
			r = __read(fd, buf, n);
			b->dry = (r > 0 && (size_t)r < n) || (r < 0 && errno == EAGAIN);
			return r;
		}
		r = __read(fd, b->in, SB_IN);
		b->dry = (r > 0 && r < SB_IN) || (r < 0 && errno == EAGAIN);
		if (r <= 0)
			return r;
		b->in_off = 0;
		b->in_len = (size_t)r;
	}
	k = b->in_len - b->in_off < n ? b->in_len - b->in_off : n;
	memcpy(buf, b->in + b->in_off, k);
	b->in_off += k;
	return (ssize_t)k;
}

ssize_t write(int fd, const void *buf, size_t n)
{
	struct sb *b = get(fd);

	if (!b)
		return __write(fd, buf, n);
	if (b->wakeup)
		return (ssize_t)n;
	if (b->err) {
		errno = b->err;
		return -1;
	}
	if (b->out_len + n > SB_OUT_MAX && b->out_len > 0) {
		errno = EAGAIN;
		return -1;
	}
	if (b->out_off > 0 && b->out_off == b->out_len)
		b->out_off = b->out_len = 0;
	if (b->out_len + n > b->out_cap) {
		size_t cap = b->out_cap ? b->out_cap : 4096;
		char *p;

		while (cap < b->out_len + n)
			cap *= 2;
		if (!(p = realloc(b->out, cap))) {
			errno = ENOMEM;
			return -1;
		}
		b->out = p;
		b->out_cap = cap;
	}
	memcpy(b->out + b->out_len, buf, n);
	b->out_len += n;
	return (ssize_t)n;
}

/* libmosquitto closes its socket right after it has written DISCONNECT:
 * what waits goes first, unless it is held (then it dies with the socket). */
int close(int fd)
{
	struct sb *b = get(fd);

	if (b && !b->wakeup && !b->hold) {
		int waited = 0;

		while (sb_flush(fd) == 0 && b->blocked && waited < SB_CLOSE_WAIT_MS) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };

			if (poll(&p, 1, 100) < 0 && errno != EINTR)
				break;
			waited += 100;
		}
	}
	drop(fd);
	return __close(fd);
}

int socketpair(int domain, int type, int protocol, int sv[2])
{
	static int (*real)(int, int, int, int[2]);
	int rc;

	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "socketpair");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	rc = real(domain, type, protocol, sv);
	if (rc == 0 && capturing && sb_active())
		for (int i = 0; i < 2; i++)
			add(sv[i])->wakeup = 1;
	return rc;
}
