/* SPDX-License-Identifier: MIT */
/* stat.h: the parts of mqlb-stat: the answers of the stats sockets
 * (mqlb-stat.c), reading figures and histograms out of them (figures.c),
 * and the live view of --top (top.c). */
#ifndef MQLB_STAT_H
#define MQLB_STAT_H

#include <signal.h>
#include <stddef.h>

struct ent {
	char *name;
	unsigned long v;
};

/* One socket's answer to a round of queries. */
struct answer {
	const char *path;
	char topic[600]; /* P/metrics/{component}/{id}, with --metrics-interval */
	int failed;      /* the last round failed: say so once */
	char err[300];   /* empty when it answered */
	struct ent *e;
	size_t n, cap;
	/* --watch, --top: the round before, for rates and windowed percentiles */
	struct ent *prev;
	size_t nprev;
	double at, prev_at;
};

/* mqlb-stat.c */
void *xrealloc(void *p, size_t n);
/* Ask every socket, the last round kept as the one before; 0 if all answered. */
int query_round(void);

/* figures.c */
const struct ent *find_in(const struct ent *e, size_t n, const char *name);
/* A histogram bucket's stat, "PREFIX_us_bUPPER": its length up to and
 * with "_us" (the histogram's name), and UPPER; 0 if name is no bucket. */
size_t hist_stat(const char *name, unsigned long *upper);
/* A histogram's total stat, "PREFIX_us_sum": as hist_stat. */
size_t hist_sum_stat(const char *name);
/* How fast name grew since the round before, a second; -1 when unknown. */
double rate_of(const struct answer *a, const char *name);

/* top.c: draw the view every interval seconds until SIGINT or SIGTERM. */
int top_run(struct answer *a, int na, double interval);
extern volatile sig_atomic_t top_stop;

#endif
