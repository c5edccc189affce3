/* SPDX-License-Identifier: MIT */
/* top.c: mqlb-stat --top, the balancer at a glance: a header of rates,
 * one row per group and one per worker (slowest first), redrawn to the
 * size of the terminal, or plain text frames when output is no terminal. */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "hist.h"
#include "log.h"
#include "stat.h"

/* The figures a row reads, now ([0]) and the round before ([1]). */
enum {
	K_INFLIGHT,
	K_SLOTS,
	K_SVC,
	K_OK,
	K_FAIL,
	K_HELD,
	K_LAST,
	K_P50,
	K_P99,
	K_AWARDED,
	K_WORKERS,
	K_LIVE,
	K_WAITING,
	K_OLDEST,
	NK
};
static const char *const fnames[NK] = {
    "inflight", "slots",  "svc_us",  "done_ok", "done_fail",    "held_us", "last_done_us",
    "us_p50",   "us_p99", "awarded", "workers", "workers_live", "waiting", "oldest_us"};
/* The histograms a row reads: a worker's award to done; a group's wait
 * for a worker and publish to done, where the auction gives them. */
enum { H_LAT, H_WAIT, H_E2E, NH };
static const char *const hnames[NH] = {"lat_us", "wait_us", "e2e_us"};

struct hbuf {
	unsigned long *b[2]; /* bucket counts, or NULL */
	unsigned long n[2];
};

/* A group or a worker of one socket's answer. */
struct row {
	int sock;
	char *key; /* GROUP, or GROUP/WID */
	unsigned long v[2][NK];
	unsigned char has[2][NK];
	struct hbuf h[NH];
	/* worked out: */
	double rate;              /* jobs done a second; -1: unknown */
	unsigned long win[NH][2]; /* p50, p99 since the round before; 0: none */
	int stuck;
	unsigned long ok, fail; /* a group's: of all its workers */
};

struct rows {
	struct row *r;
	size_t n, cap;
};

volatile sig_atomic_t top_stop;
static volatile sig_atomic_t winch;
static struct {
	struct answer *a;
	int na, tty, attrs, cols, lines, used;
	double interval;
	struct rows groups, workers;
} V;

static void on_stop(int sig)
{
	top_stop = 1;
}
/* A round before this one that answered: rates and windows are known. */
static int has_prev(const struct answer *a)
{
	return a->prev_at > 0 && a->nprev > 0 && a->at > a->prev_at;
}
static void on_winch(int sig)
{
	winch = 1;
}

/* ---- reading the answers ---------------------------------------------------- */

static struct row *row_of(struct rows *rs, int sock, const char *key, size_t klen)
{
	struct row *r;

	for (size_t i = rs->n; i-- > 0;)
		if (rs->r[i].sock == sock && strlen(rs->r[i].key) == klen &&
		    !memcmp(rs->r[i].key, key, klen))
			return &rs->r[i];
	if (rs->n == rs->cap) {
		rs->cap = rs->cap ? 2 * rs->cap : 32;
		rs->r = xrealloc(rs->r, rs->cap * sizeof *rs->r);
	}
	r = memset(&rs->r[rs->n++], 0, sizeof *r);
	r->sock = sock;
	r->key = xrealloc(NULL, klen + 1);
	memcpy(r->key, key, klen);
	r->key[klen] = '\0';
	r->rate = -1;
	return r;
}

static void rows_free(struct rows *rs)
{
	for (size_t i = 0; i < rs->n; i++) {
		free(rs->r[i].key);
		for (int h = 0; h < NH; h++)
			free(rs->r[i].h[h].b[0]), free(rs->r[i].h[h].b[1]);
	}
	rs->n = 0;
}

/* One "kind.key.field" figure into its row: a field, or a bucket. */
static void take(struct row *r, int t, const char *field, unsigned long v)
{
	unsigned long upper;
	size_t l;

	for (int f = 0; f < NK; f++)
		if (!strcmp(field, fnames[f])) {
			r->v[t][f] = v;
			r->has[t][f] = 1;
			return;
		}
	if (!(l = hist_stat(field, &upper)))
		return;
	for (int h = 0; h < NH; h++)
		if (strlen(hnames[h]) == l && !strncmp(field, hnames[h], l)) {
			struct hbuf *hb = &r->h[h];

			if (!hb->b[t]) {
				hb->b[t] = xrealloc(NULL, HIST_BUCKETS * sizeof *hb->b[t]);
				memset(hb->b[t], 0, HIST_BUCKETS * sizeof *hb->b[t]);
			}
			hb->b[t][hist_bucket(upper)] += v;
			hb->n[t] += v;
		}
}

/* The rows of every answer, t = 0 from its figures now, 1 from the round
 * before (rows that are gone now are not made for that). */
static void read_rows(int t)
{
	for (int i = 0; i < V.na; i++) {
		const struct answer *a = &V.a[i];
		const struct ent *e = t ? a->prev : a->e;
		size_t n = t ? a->nprev : a->n;

		if (a->err[0] || (t && !has_prev(a)))
			continue;
		for (size_t j = 0; j < n; j++) {
			const char *nm = e[j].name, *dot = strchr(nm, '.'),
				   *last = strrchr(nm, '.');
			struct rows *rs;
			struct row *r;

			if (!strncmp(nm, "worker.", 7))
				rs = &V.workers;
			else if (!strncmp(nm, "group.", 6))
				rs = &V.groups;
			else
				continue;
			if (last <= dot + 1)
				continue;
			if (t) {
				/* only rows there now */
				size_t k;

				for (k = 0; k < rs->n; k++)
					if (rs->r[k].sock == i &&
					    strlen(rs->r[k].key) == (size_t)(last - dot - 1) &&
					    !memcmp(rs->r[k].key, dot + 1,
						    (size_t)(last - dot - 1)))
						break;
				if (k == rs->n)
					continue;
			}
			r = row_of(rs, i, dot + 1, (size_t)(last - dot - 1));
			take(r, t, last + 1, e[j].v);
		}
	}
}

/* A quantile of n values for a cell: 0 there means none, so a quantile
 * of 0 us (a job awarded in the loop turn that read it) is ZERO_US. */
#define ZERO_US ((unsigned long)-1)
static unsigned long nonzero(unsigned long q, unsigned long n) { return n && !q ? ZERO_US : q; }

/* The p-quantile of what a histogram counted since the round before: all
 * it counted if it is new; 0 when nothing (or no round before). */
static unsigned long window_q(const struct row *r, const struct answer *a, int h, double q)
{
	const struct hbuf *hb = &r->h[h];
	unsigned long d[HIST_BUCKETS], n = 0;

	if (!has_prev(a) || !hb->b[0])
		return 0;
	for (int i = 0; i < HIST_BUCKETS; i++) {
		unsigned long was = hb->b[1] ? hb->b[1][i] : 0;

		d[i] = hb->b[0][i] >= was ? hb->b[0][i] - was : hb->b[0][i];
		n += d[i];
	}
	return nonzero(hist_quantile_of(d, n, q), n);
}

/* Held a job past its usual time: twice its usual and a second more; with
 * no job done yet, 10 seconds. */
static int stuck(const struct row *r)
{
	unsigned long usual = r->v[0][K_SVC] > r->v[0][K_P99] ? r->v[0][K_SVC] : r->v[0][K_P99];
	unsigned long held = r->v[0][K_HELD];

	if (!r->v[0][K_INFLIGHT])
		return 0;
	if (!r->v[0][K_OK])
		return held > 10000000;
	return held > 2 * usual && held > usual + 1000000;
}

/* The group's dones, jobs a second and award-to-done window: its workers'. */
static void group_window(struct row *g)
{
	unsigned long d[HIST_BUCKETS] = {0}, n = 0;
	size_t kl = strlen(g->key);
	const struct answer *a = &V.a[g->sock];
	double rate = 0;
	int known = 0;

	for (size_t i = 0; i < V.workers.n; i++) {
		const struct row *w = &V.workers.r[i];
		const struct hbuf *hb = &w->h[H_LAT];

		if (w->sock != g->sock || strncmp(w->key, g->key, kl) || w->key[kl] != '/')
			continue;
		g->ok += w->v[0][K_OK];
		g->fail += w->v[0][K_FAIL];
		if (!has_prev(a))
			continue;
		if (w->rate >= 0)
			rate += w->rate, known = 1;
		for (int b = 0; hb->b[0] && b < HIST_BUCKETS; b++) {
			unsigned long was = hb->b[1] ? hb->b[1][b] : 0,
				      now = hb->b[0][b] >= was ? hb->b[0][b] - was : hb->b[0][b];

			d[b] += now;
			n += now;
		}
	}
	if (!has_prev(a))
		return;
	g->rate = known ? rate : -1;
	g->win[H_LAT][0] = nonzero(hist_quantile_of(d, n, 0.5), n);
	g->win[H_LAT][1] = nonzero(hist_quantile_of(d, n, 0.99), n);
}

static void work_out(void)
{
	for (size_t i = 0; i < V.workers.n; i++) {
		struct row *r = &V.workers.r[i];
		const struct answer *a = &V.a[r->sock];

		if (!has_prev(a))
			continue;
		if (r->has[1][K_OK]) {
			unsigned long now = r->v[0][K_OK] + r->v[0][K_FAIL],
				      was = r->v[1][K_OK] + r->v[1][K_FAIL];

			r->rate = now >= was ? (double)(now - was) / (a->at - a->prev_at) : -1;
		} else {
			/* new since the round before */
			r->rate = (double)(r->v[0][K_OK] + r->v[0][K_FAIL]) / (a->at - a->prev_at);
		}
		r->win[H_LAT][0] = window_q(r, a, H_LAT, 0.5);
		r->win[H_LAT][1] = window_q(r, a, H_LAT, 0.99);
	}
	for (size_t i = 0; i < V.workers.n; i++)
		V.workers.r[i].stuck = stuck(&V.workers.r[i]);
	for (size_t i = 0; i < V.groups.n; i++) {
		struct row *g = &V.groups.r[i];

		group_window(g);
		for (int h = H_WAIT; h < NH; h++) {
			g->win[h][0] = window_q(g, &V.a[g->sock], h, 0.5);
			g->win[h][1] = window_q(g, &V.a[g->sock], h, 0.99);
		}
	}
}

/* Slowest or most loaded first: held past its time, then the longer of its
 * usual time and its oldest job, then slots in use, then by name. */
static int by_slowness(const void *x, const void *y)
{
	const struct row *a = x, *b = y;
	unsigned long sa = a->v[0][K_SVC] > a->v[0][K_HELD] ? a->v[0][K_SVC] : a->v[0][K_HELD];
	unsigned long sb = b->v[0][K_SVC] > b->v[0][K_HELD] ? b->v[0][K_SVC] : b->v[0][K_HELD];
	double la = (double)a->v[0][K_INFLIGHT] / (a->v[0][K_SLOTS] ? (double)a->v[0][K_SLOTS] : 1);
	double lb = (double)b->v[0][K_INFLIGHT] / (b->v[0][K_SLOTS] ? (double)b->v[0][K_SLOTS] : 1);

	if (a->stuck != b->stuck)
		return b->stuck - a->stuck;
	if (sa != sb)
		return sa < sb ? 1 : -1;
	if (la != lb)
		return la < lb ? 1 : -1;
	return strcmp(a->key, b->key);
}

/* ---- formatting ------------------------------------------------------------- */

/* Milliseconds with two significant digits: 0.052, 2.3, 23, 230, 2300. */
static const char *ms(char *buf, size_t n, unsigned long us)
{
	double v = (double)us / 1000;
	int dec = v >= 10 ? 0 : v >= 1 ? 1 : v >= 0.1 ? 2 : 3;

	if (!us)
		snprintf(buf, n, "-");
	else if (us == ZERO_US)
		snprintf(buf, n, "0");
	else if (v >= 100) {
		double p = 1;

		while (v / p >= 100)
			p *= 10;
		snprintf(buf, n, "%.0f", (double)(unsigned long)(v / p + 0.5) * p);
	} else
		snprintf(buf, n, "%.*f", dec, v);
	return buf;
}

/* A duration with its unit: 850ms, 1.2s, 45s, 12m, 3.1h. */
static const char *dur(char *buf, size_t n, unsigned long us)
{
	double s = (double)us / 1e6;

	if (us < 1000000) {
		char m[32];

		snprintf(buf, n, "%sms", us ? ms(m, sizeof m, us) : "0");
	} else if (s < 10)
		snprintf(buf, n, "%.1fs", s);
	else if (s < 100)
		snprintf(buf, n, "%.0fs", s);
	else if (s < 6000)
		snprintf(buf, n, "%.0fm", s / 60);
	else
		snprintf(buf, n, "%.1fh", s / 3600);
	return buf;
}

static const char *rate(char *buf, size_t n, double r)
{
	if (r < 0)
		snprintf(buf, n, "-");
	else
		snprintf(buf, n, r < 100 ? "%.1f" : "%.0f", r);
	return buf;
}

/* ---- the screen ------------------------------------------------------------- */

enum attr { A_NONE, A_BOLD, A_REV };

/* One line, cut to the width; none past the last line of the terminal. */
static void line(enum attr at, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line(enum attr at, const char *fmt, ...)
{
	char buf[4096];
	va_list ap;

	if (V.lines && V.used >= V.lines)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if ((int)strlen(buf) > V.cols)
		buf[V.cols] = '\0';
	if (V.used)
		putchar('\n');
	/* Cleared first: a line as wide as the screen leaves the cursor past
	 * its end, where clearing would take its last character. */
	if (V.tty)
		fputs("\033[2K", stdout);
	if (V.attrs && at != A_NONE)
		printf("%s%s\033[0m", at == A_BOLD ? "\033[1m" : "\033[7m", buf);
	else
		fputs(buf, stdout);
	V.used++;
}

/* The socket's name in the header: its file name without ".sock". */
static void stage_name(const struct answer *a, char *buf, size_t n)
{
	const char *base = strrchr(a->path, '/') ? strrchr(a->path, '/') + 1 : a->path;
	size_t l = strlen(base);

	if (l > 5 && !strcmp(base + l - 5, ".sock"))
		l -= 5;
	snprintf(buf, n, "%.*s", (int)l, base);
}

static int is_auction(const struct answer *a)
{
	return find_in(a->e, a->n, "tokens_used") != NULL;
}
static int is_sub(const struct answer *a)
{
	return find_in(a->e, a->n, "groups_seen") != NULL;
}

static void header(void)
{
	char b[4][32], s[1024] = "", nm[256], ts[64];
	double in = 0, awards = 0, done = 0, drops = 0, r;
	unsigned long waiting = 0, oldest = 0;
	int any_sub = 0, known = 0;
	time_t t = time(NULL);
	size_t l = 0;

	for (int i = 0; i < V.na; i++)
		any_sub |= !V.a[i].err[0] && is_sub(&V.a[i]);
	for (int i = 0; i < V.na; i++) {
		const struct answer *a = &V.a[i];
		const struct ent *e;

		stage_name(a, nm, sizeof nm);
		l +=
		    (size_t)snprintf(s + l, sizeof s - l, "  %s %s", nm, a->err[0] ? "DOWN" : "up");
		if (l >= sizeof s)
			l = sizeof s - 1;
		if (a->err[0])
			continue;
		known |= has_prev(a);
		if ((is_sub(a) || (!any_sub && is_auction(a))) && (r = rate_of(a, "msg")) >= 0)
			in += r;
		for (size_t j = 0; j < a->n; j++)
			if (!strncmp(a->e[j].name, "drop_", 5) &&
			    (r = rate_of(a, a->e[j].name)) >= 0)
				drops += r;
		if (!is_auction(a))
			continue;
		if ((r = rate_of(a, "awarded")) >= 0)
			awards += r;
		if ((r = rate_of(a, "done_ok")) >= 0)
			done += r;
		if ((r = rate_of(a, "done_fail")) >= 0)
			done += r;
		if ((e = find_in(a->e, a->n, "waiting")))
			waiting += e->v;
		if ((e = find_in(a->e, a->n, "oldest_us")) && e->v > oldest)
			oldest = e->v;
	}
	strftime(ts, sizeof ts, "%H:%M:%S", localtime(&t));
	line(A_BOLD, "mqlb-stat --top  %s  every %gs %s", ts, V.interval, s);
	line(A_NONE, "in %s/s  awards %s/s  done %s/s  drops %s/s  waiting %lu  oldest %s",
	     rate(b[0], sizeof b[0], known ? in : -1), rate(b[1], sizeof b[1], known ? awards : -1),
	     rate(b[2], sizeof b[2], known ? done : -1),
	     rate(b[3], sizeof b[3], known ? drops : -1), waiting,
	     waiting ? dur(nm, sizeof nm, oldest) : "-");
	for (int i = 0; i < V.na; i++)
		if (V.a[i].err[0]) {
			stage_name(&V.a[i], nm, sizeof nm);
			line(A_REV, "%s: %s", nm, V.a[i].err);
		}
}

/* A table's columns: shown by priority while they fit beside the name. */
struct col {
	const char *title;
	int w, prio;
};

/* Which columns fit: names at least min wide, the rest by priority. */
static int fit(const struct col *c, int nc, int min, int *show)
{
	int left = V.cols - min - 2;

	for (int i = 0; i < nc; i++)
		show[i] = 0;
	for (int p = 0; p < 10; p++)
		for (int i = 0; i < nc; i++)
			if (c[i].prio == p && c[i].w + 1 <= left)
				show[i] = 1, left -= c[i].w + 1;
	return min + (left > 0 ? (left < 40 - min ? left : 40 - min) : 0);
}

/* One row of a table: the marker, the name, the cells shown. */
static void table_row(enum attr at, char mark, int nw, const char *name, const struct col *c,
		      int nc, const int *show, char cells[][32])
{
	char buf[4096];
	int l = snprintf(buf, sizeof buf, "%c %-*.*s", mark, nw, nw, name);

	for (int i = 0; i < nc && l < (int)sizeof buf - 64; i++)
		if (show[i])
			l += snprintf(buf + l, sizeof buf - (size_t)l, " %*s", c[i].w, cells[i]);
	line(at, "%s", buf);
}

/* A blank line, then the table's head: its name and the titles shown. */
static void table_head(int nw, const char *name, const struct col *c, int nc, const int *show,
		       char cells[][32])
{
	for (int i = 0; i < nc; i++)
		snprintf(cells[i], 32, "%s", c[i].title);
	line(A_NONE, "%s", "");
	table_row(A_BOLD, ' ', nw, name, c, nc, show, cells);
}

static int has_hist(int h)
{
	for (size_t i = 0; i < V.groups.n; i++)
		if (V.groups.r[i].h[h].b[0])
			return 1;
	return 0;
}

static void groups(void)
{
	static const struct col c[] = {
	    {"WKRS", 4, 0},   {"SLOTS", 9, 0},  {"WAITING", 7, 0}, {"OLDEST", 7, 0},
	    {"JOBS/S", 7, 0}, {"WAIT50", 6, 1}, {"WAIT99", 6, 1},  {"E2E50", 6, 1},
	    {"E2E99", 6, 1},  {"SVC50", 6, 2},  {"SVC99", 6, 2},   {"DONE", 9, 3},
	    {"FAIL", 6, 3},
	};
	enum { NC = sizeof c / sizeof *c };
	int show[NC], nw, wait = has_hist(H_WAIT), e2e = has_hist(H_E2E);
	char cells[NC][32];
	struct col cc[NC];
	/* Half the lines under the header at most: the workers need the rest. */
	size_t most = V.lines > 12 ? (size_t)(V.lines - 8) / 2 : V.lines ? 1 : V.groups.n;

	memcpy(cc, c, sizeof c);
	for (int i = 5; i < 9; i++)
		if (!(i < 7 ? wait : e2e))
			cc[i].prio = 99;
	nw = fit(cc, NC, 10, show);
	table_head(nw, "GROUP", cc, NC, show, cells);

	for (size_t i = 0; i < V.groups.n; i++) {
		const struct row *g = &V.groups.r[i];
		const unsigned long *v = g->v[0];

		if (i == most && i + 1 < V.groups.n) {
			line(A_NONE, "  ... %zu more", V.groups.n - i);
			break;
		}

		snprintf(cells[0], 32, "%lu", v[K_LIVE]);
		snprintf(cells[1], 32, "%lu/%lu", v[K_INFLIGHT], v[K_SLOTS]);
		snprintf(cells[2], 32, "%lu", v[K_WAITING]);
		if (v[K_WAITING])
			dur(cells[3], 32, v[K_OLDEST]);
		else
			snprintf(cells[3], 32, "-");
		rate(cells[4], 32, g->rate);
		ms(cells[5], 32, g->win[H_WAIT][0]);
		ms(cells[6], 32, g->win[H_WAIT][1]);
		ms(cells[7], 32, g->win[H_E2E][0]);
		ms(cells[8], 32, g->win[H_E2E][1]);
		ms(cells[9], 32, g->win[H_LAT][0]);
		ms(cells[10], 32, g->win[H_LAT][1]);
		snprintf(cells[11], 32, "%lu", g->ok);
		snprintf(cells[12], 32, "%lu", g->fail);
		table_row(v[K_WAITING] && v[K_INFLIGHT] >= v[K_SLOTS] ? A_BOLD : A_NONE, ' ', nw,
			  g->key, cc, NC, show, cells);
	}
}

static void workers(void)
{
	static const struct col c[] = {
	    {"SLOTS", 7, 0}, {"JOBS/S", 7, 0}, {"SVC50", 6, 0}, {"SVC99", 6, 0},
	    {"HELD", 6, 1},  {"LAST", 6, 0},   {"DONE", 8, 2},  {"FAIL", 6, 2},
	    {"ALL50", 6, 3}, {"ALL99", 6, 3},  {"AVG", 6, 4},   {"AWARDED", 8, 5},
	};
	enum { NC = sizeof c / sizeof *c };
	int show[NC], nw = fit(c, NC, 14, show);
	char cells[NC][32];
	size_t shown = 0;

	table_head(nw, "WORKER", c, NC, show, cells);
	for (size_t i = 0; i < V.workers.n; i++) {
		const struct row *w = &V.workers.r[i];
		const unsigned long *v = w->v[0];

		if (V.lines && V.used >= V.lines - 1 && i + 1 < V.workers.n) {
			line(A_NONE, "  ... %zu more", V.workers.n - shown);
			break;
		}
		snprintf(cells[0], 32, "%lu/%lu", v[K_INFLIGHT], v[K_SLOTS]);
		rate(cells[1], 32, w->rate);
		ms(cells[2], 32, w->win[H_LAT][0]);
		ms(cells[3], 32, w->win[H_LAT][1]);
		if (v[K_INFLIGHT])
			dur(cells[4], 32, v[K_HELD]);
		else
			snprintf(cells[4], 32, "-");
		if (w->has[0][K_LAST])
			dur(cells[5], 32, v[K_LAST]);
		else
			snprintf(cells[5], 32, "-");
		snprintf(cells[6], 32, "%lu", v[K_OK]);
		snprintf(cells[7], 32, "%lu", v[K_FAIL]);
		ms(cells[8], 32, v[K_P50]);
		ms(cells[9], 32, v[K_P99]);
		ms(cells[10], 32, v[K_SVC]);
		snprintf(cells[11], 32, "%lu", v[K_AWARDED]);
		table_row(w->stuck ? A_REV : A_NONE, w->stuck ? '!' : ' ', nw, w->key, c, NC, show,
			  cells);
		shown++;
	}
}

static void size_up(void)
{
	struct winsize ws;
	const char *c = getenv("COLUMNS");

	V.cols = c && atoi(c) > 0 ? atoi(c) : 80;
	V.lines = 0;
	if (V.tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
		V.cols = ws.ws_col;
		V.lines = ws.ws_row;
	} else if (V.tty) {
		V.lines = 24;
	}
	if (V.cols > 4000)
		V.cols = 4000;
}

static void draw(void)
{
	size_up();
	V.used = 0;
	if (V.tty)
		fputs("\033[H", stdout);
	header();
	groups();
	workers();
	if (V.tty)
		fputs("\033[J", stdout);
	else
		fputs("\n\n", stdout);
	if (fflush(stdout) == EOF || ferror(stdout))
		die(EXIT_SYSERR, "cannot write output: %s", strerror(errno));
}

static void refresh(void)
{
	query_round();
	rows_free(&V.groups);
	rows_free(&V.workers);
	read_rows(0);
	read_rows(1);
	work_out();
	qsort(V.workers.r, V.workers.n, sizeof *V.workers.r, by_slowness);
}

static double mono(void)
{
	return hist_now();
}

int top_run(struct answer *a, int na, double interval)
{
	struct sigaction sa = {.sa_handler = on_stop}, sw = {.sa_handler = on_winch};
	const char *term = getenv("TERM");

	V.a = a;
	V.na = na;
	V.interval = interval;
	V.tty = isatty(STDOUT_FILENO);
	V.attrs = V.tty && term && *term && strcmp(term, "dumb");
	/* No SA_RESTART: a signal ends the sleep at once. */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGWINCH, &sw, NULL);
	if (V.tty)
		fputs("\033[?25l\033[H\033[2J", stdout);
	refresh();
	draw();
	while (!top_stop) {
		double until = mono() + interval;

		while (!top_stop && mono() < until) {
			double left = until - mono();
			struct timespec ts = {(time_t)left, (long)((left - (time_t)left) * 1e9)};

			nanosleep(&ts, NULL);
			if (winch && !top_stop) {
				winch = 0;
				draw();
			}
		}
		if (top_stop)
			break;
		refresh();
		draw();
	}
	if (V.tty) {
		printf("\033[?25h\r\n");
		fflush(stdout);
	}
	rows_free(&V.groups);
	rows_free(&V.workers);
	free(V.groups.r);
	free(V.workers.r);
	return EXIT_OK;
}
