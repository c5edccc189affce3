/* SPDX-License-Identifier: MIT */
/* collect.c: a prepare watcher that sets libev's I/O collect interval before
 * each poll from the messages and records recent turns took (collect.h). */
#include "config.h"

#include "collect.h"

static ev_prepare prep;
static double most, now;
static ev_tstamp last; /* when the last turn ended */
static double avg; /* messages and records a turn, recent turns weighing most */
static unsigned long seen; /* this turn's so far */

/* Before the loop polls: a turn that took n makes the average move a
 * quarter of the way to n, or makes it n after a pause longer than two
 * gathers (the crowd is gone). At a rate of r messages a second and turns
 * t0 apart with no gathering, a gather of c takes n = r (c + t0) a turn;
 * with c = a (n - 1), a = COLLECT_PER_MSG, c settles at a (r t0 - 1) /
 * (1 - a r): none while turns take one message, the limit once a r is 1. */
static void prep_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	ev_tstamp t = ev_now(loop);
	double c;

	if (t - last > 2 * most)
		avg = (double)seen;
	else
		avg += ((double)seen - avg) / 4;
	seen = 0;
	last = t;
	c = (avg - 1) * COLLECT_PER_MSG;
	if (c > most)
		c = most;
	if (c < COLLECT_MIN)
		c = 0;
	if (c != now) {
		now = c;
		ev_set_io_collect_interval(loop, c);
	}
}

void collect_start(struct ev_loop *loop, double limit)
{
	most = limit;
	if (most <= 0 || ev_is_active(&prep))
		return;
	ev_prepare_init(&prep, prep_cb);
	ev_prepare_start(loop, &prep);
	ev_unref(loop); /* it alone keeps no loop running */
}

void collect_note(unsigned n) { seen += n; }

double collect_now(void) { return now; }
