/* SPDX-License-Identifier: MIT */
/* collectcheck.c (check program): common/collect.c's gathering as turns of a
 * real libev loop take messages; one case per argument, "ok CASE" or "FAIL". */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "collect.h"

static struct ev_loop *loop;

/* k turns of the loop, each taking n messages */
static void turns(int k, unsigned n)
{
	for (int i = 0; i < k; i++) {
		collect_note(n);
		ev_run(loop, EVRUN_NOWAIT);
	}
}

static int near(double a, double b) { return fabs(a - b) < 1e-6; }

static void timeout_cb(struct ev_loop *l, ev_timer *w, int revents) {}
static void readable_cb(struct ev_loop *l, ev_io *w, int revents) { ev_io_stop(l, w); }

/* One turn that polls until s seconds have passed (an idle loop). */
static void pause_for(double s)
{
	ev_timer t;

	ev_timer_init(&t, timeout_cb, s, 0);
	ev_timer_start(loop, &t);
	ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &t);
}

static int run(const char *name)
{
	double c = 0;

	if (!strcmp(name, "one-at-a-time")) {
		collect_start(loop, 0.002);
		turns(50, 1);
		c = collect_now();
		if (c != 0)
			goto fail;
	} else if (!strcmp(name, "crowd-then-idle")) {
		collect_start(loop, 0.002);
		turns(50, 100);
		if (!near(c = collect_now(), 0.002))
			goto fail;
		turns(50, 0);
		if ((c = collect_now()) != 0)
			goto fail;
	} else if (!strcmp(name, "pause")) {
		/* after a crowd, the first turn past a pause counts alone */
		collect_start(loop, 0.005);
		turns(50, 100);
		pause_for(0.015);
		turns(1, 1);
		if ((c = collect_now()) != 0)
			goto fail;
	} else if (!strcmp(name, "sleeps")) {
		/* the loop itself gathers: input ready at once waits the limit */
		int p[2];
		ev_io w;
		ev_tstamp t0;

		collect_start(loop, 0.05);
		turns(50, 1000);
		if (pipe(p) < 0 || write(p[1], "x", 1) != 1)
			goto fail;
		ev_io_init(&w, readable_cb, p[0], EV_READ);
		ev_io_start(loop, &w);
		t0 = ev_time();
		ev_run(loop, EVRUN_ONCE);
		if ((c = ev_time() - t0) < 0.04)
			goto fail;
	} else if (!strcmp(name, "between")) {
		/* six a turn: 0.1 ms for each of the five past the first */
		collect_start(loop, 0.002);
		turns(100, 6);
		if (!near(c = collect_now(), 0.0005))
			goto fail;
	} else if (!strcmp(name, "off")) {
		collect_start(loop, 0);
		turns(50, 100);
		if ((c = collect_now()) != 0)
			goto fail;
	} else {
		printf("FAIL %s: no such case\n", name);
		return 1;
	}
	printf("ok %s\n", name);
	return 0;
fail:
	printf("FAIL %s: gathers (or took) %g s\n", name, c);
	return 1;
}

/* Each case in a process of its own: the gathering is the process's. */
int main(int argc, char **argv)
{
	loop = EV_DEFAULT;
	return argc == 2 ? run(argv[1]) : (printf("usage: collectcheck CASE\n"), 2);
}
