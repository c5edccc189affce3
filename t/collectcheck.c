/* SPDX-License-Identifier: MIT */
/* collectcheck.c (check program): common/collect.c's gathering as turns of a
 * real libev loop take messages; one case per argument, "ok CASE" or "FAIL". */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

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

static int run(const char *name)
{
	double c;

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
	printf("FAIL %s: gathers %g s\n", name, c);
	return 1;
}

/* Each case in a process of its own: the gathering is the process's. */
int main(int argc, char **argv)
{
	loop = EV_DEFAULT;
	return argc == 2 ? run(argv[1]) : (printf("usage: collectcheck CASE\n"), 2);
}
