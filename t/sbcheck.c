/* SPDX-License-Identifier: MIT */
/* sbcheck.c (check program): common/sockbuf.c's contract on a socket pair,
 * one case per argument; prints "ok CASE" or "FAIL CASE: why", exits 1. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sockbuf.h"

static int sv[2]; /* sv[0] buffered, as a broker socket; sv[1] the broker */

#define CHECK(c, ...)                                    \
	do {                                             \
		if (!(c)) {                              \
			printf("FAIL %s: ", name);       \
			printf(__VA_ARGS__);             \
			printf("\n");                    \
			return 1;                        \
		}                                        \
	} while (0)

/* What the peer can read now, without waiting. */
static ssize_t peer_has(char *buf, size_t n)
{
	ssize_t r = recv(sv[1], buf, n, MSG_DONTWAIT);

	return r < 0 && errno == EAGAIN ? 0 : r;
}

static void pair(void)
{
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	sb_attach(sv[0]);
}

static int run(const char *name)
{
	char buf[64];

	pair();
	if (!strcmp(name, "active")) {
		CHECK(sb_active(), "read and write are not ours");
	} else if (!strcmp(name, "write-waits")) {
		CHECK(write(sv[0], "ab", 2) == 2, "write");
		CHECK(write(sv[0], "cd", 2) == 2, "write");
		CHECK(peer_has(buf, sizeof buf) == 0, "sent before sb_flush");
		CHECK(sb_sent(sv[0]) == 0, "counted as sent before sb_flush");
		CHECK(sb_flush(sv[0]) == 0, "flush");
		CHECK(sb_sent(sv[0]) == 4, "sent is not 4");
		CHECK(peer_has(buf, sizeof buf) == 4 && !memcmp(buf, "abcd", 4), "not abcd");
	} else if (!strcmp(name, "hold")) {
		sb_hold(sv[0], 1);
		CHECK(write(sv[0], "ab", 2) == 2, "write");
		CHECK(sb_flush(sv[0]) == 0, "flush");
		CHECK(peer_has(buf, sizeof buf) == 0, "held bytes went");
		CHECK(sb_sent(sv[0]) == 0, "held bytes counted as sent");
		sb_hold(sv[0], 0);
		CHECK(sb_flush(sv[0]) == 0 && peer_has(buf, sizeof buf) == 2, "released bytes");
		CHECK(sb_sent(sv[0]) == 2, "released bytes not counted as sent");
	} else if (!strcmp(name, "close-held-discards")) {
		sb_hold(sv[0], 1);
		CHECK(write(sv[0], "ab", 2) == 2, "write");
		close(sv[0]);
		CHECK(read(sv[1], buf, sizeof buf) == 0, "held bytes sent at close");
	} else if (!strcmp(name, "close-sends")) {
		CHECK(write(sv[0], "ab", 2) == 2, "write");
		close(sv[0]);
		CHECK(read(sv[1], buf, sizeof buf) == 2, "bytes lost at close");
	} else if (!strcmp(name, "read-buffers")) {
		CHECK(write(sv[1], "0123456789", 10) == 10, "peer write");
		CHECK(read(sv[0], buf, 1) == 1 && buf[0] == '0', "first byte");
		CHECK(sb_unread(sv[0]) == 9, "%zu unread, not 9", sb_unread(sv[0]));
		CHECK(read(sv[0], buf, 4) == 4 && !memcmp(buf, "1234", 4), "next four");
		CHECK(read(sv[0], buf, 64) == 5 && !memcmp(buf, "56789", 5), "the rest");
		CHECK(read(sv[0], buf, 1) < 0 && errno == EAGAIN, "not EAGAIN when empty");
	} else if (!strcmp(name, "dry")) {
		/* a short read emptied the socket: no read(2) until it is readable */
		CHECK(write(sv[1], "ab", 2) == 2, "peer write");
		CHECK(read(sv[0], buf, 64) == 2, "first read");
		CHECK(write(sv[1], "cd", 2) == 2, "peer write");
		CHECK(sb_dry(sv[0]), "not dry after a short read");
		CHECK(read(sv[0], buf, 64) < 0 && errno == EAGAIN, "the kernel was asked again");
		sb_readable(sv[0]);
		CHECK(!sb_dry(sv[0]), "dry after sb_readable");
		CHECK(read(sv[0], buf, 64) == 2 && !memcmp(buf, "cd", 2), "not cd once readable");
	} else if (!strcmp(name, "full-read")) {
		/* a read that filled the buffer may have left more: ask again */
		static char big[16 * 1024 + 10], in[16 * 1024];
		size_t got = 0, n;
		ssize_t r;

		memset(big, 'x', sizeof big);
		CHECK(write(sv[1], big, sizeof big) == (ssize_t)sizeof big, "peer write");
		while ((n = sizeof in - got > 1000 ? 1000 : sizeof in - got) > 0 &&
		       (r = read(sv[0], in + got, n)) > 0)
			got += (size_t)r;
		CHECK(got == sizeof in, "%zu bytes, not the buffer's", got);
		CHECK(!sb_dry(sv[0]), "dry after a full read");
		CHECK(read(sv[0], buf, 64) == 10, "the last 10 bytes");
		CHECK(sb_dry(sv[0]), "not dry after the short read");
	} else if (!strcmp(name, "dry-direct")) {
		/* a read of 16 KiB or more goes straight to the kernel: the same */
		static char in[16 * 1024];

		CHECK(write(sv[1], "ab", 2) == 2, "peer write");
		CHECK(read(sv[0], in, sizeof in) == 2, "first read");
		CHECK(write(sv[1], "cd", 2) == 2, "peer write");
		CHECK(read(sv[0], in, sizeof in) < 0 && errno == EAGAIN, "asked the kernel again");
		sb_readable(sv[0]);
		CHECK(read(sv[0], in, sizeof in) == 2 && !memcmp(in, "cd", 2), "not cd once ready");
	} else if (!strcmp(name, "fd-reused")) {
		/* closed, its number taken by another file: that one is not ours */
		int fd;

		CHECK(write(sv[0], "ab", 2) == 2, "write");
		close(sv[0]);
		fd = open("/dev/null", O_WRONLY);
		CHECK(fd == sv[0], "fd %d, not %d", fd, sv[0]);
		CHECK(write(fd, "x", 1) == 1 && sb_flush(fd) == 0 && !sb_unread(fd), "write");
		CHECK(peer_has(buf, sizeof buf) == 2, "buffered bytes after the close");
	} else if (!strcmp(name, "fork")) {
		/* the child closes the shared socket: the parent's bytes stay */
		pid_t p;
		int st;

		CHECK(write(sv[0], "ab", 2) == 2, "write");
		if ((p = fork()) == 0) {
			close(sv[0]);
			_exit(0);
		}
		waitpid(p, &st, 0);
		CHECK(peer_has(buf, sizeof buf) == 0, "the child sent the parent's bytes");
		CHECK(sb_flush(sv[0]) == 0 && peer_has(buf, sizeof buf) == 2, "parent's bytes");
	} else if (!strcmp(name, "wakeup")) {
		int w[2];

		sb_capture_wakeup(1);
		socketpair(AF_UNIX, SOCK_STREAM, 0, w);
		sb_capture_wakeup(0);
		fcntl(w[1], F_SETFL, O_NONBLOCK);
		for (int i = 0; i < 300000; i++)
			CHECK(write(w[1], "", 1) == 1, "wake-up write %d failed", i);
		CHECK(recv(w[0], buf, 1, MSG_DONTWAIT) < 0, "the wake-up byte was sent");
	} else {
		printf("FAIL %s: no such case\n", name);
		return 1;
	}
	printf("ok %s\n", name);
	return 0;
}

int main(int argc, char **argv)
{
	int bad = 0;

	for (int i = 1; i < argc; i++)
		bad |= run(argv[i]);
	return bad;
}
