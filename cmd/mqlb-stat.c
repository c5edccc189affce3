/* SPDX-License-Identifier: MIT */
/* mqlb-stat: ask the stats sockets of running mqlb commands for their
 * figures and print them as a table or in Prometheus text format, once or
 * redrawn every few seconds, as a live view (--top, stat/top.c), or publish
 * them on P/metrics/ like $SYS. */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hist.h"
#include "log.h"
#include "mqtt.h"
#include "opt.h"
#include "record.h"
#include "sock.h"
#include "stat/stat.h"

static const char usage[] =
	"usage: mqlb-stat [-v] [--quiet] [-o file] [--prom | --top | --json] [--watch seconds]\n"
	"                 [--timeout seconds] socket ...\n"
	"       mqlb-stat --metrics-interval seconds [-v] [--quiet] [-o file]\n"
	"                 [--timeout seconds] [-h host] [-p port] [-u user] [-P password]\n"
	"                 [-i id] [-V 5|311] [-k keepalive] [--cafile file] [--capath dir]\n"
	"                 [--cert file] [--key file] [--insecure] [--prefix prefix]\n"
	"                 [--retries n] [component/id=]socket ...\n";

enum { O_PROM = 2000, O_TOP, O_JSON, O_WATCH, O_TIMEOUT, O_METRICS };

static const struct option longopts[] = {
	{ "prom", no_argument, NULL, O_PROM },
	{ "top", no_argument, NULL, O_TOP },
	{ "json", no_argument, NULL, O_JSON },
	{ "watch", required_argument, NULL, O_WATCH },
	{ "timeout", required_argument, NULL, O_TIMEOUT },
	{ "metrics-interval", required_argument, NULL, O_METRICS },
	{ NULL, 0, NULL, 0 },
};

static struct {
	struct conf cf;
	int prom, top, json;
	double watch, timeout, metrics;
	struct ev_loop *loop;
	struct mq mq;
	ev_timer tick;
	ev_signal sigint, sigterm;
	struct answer *a;
	int na;
} S = { .timeout = 2 };

static volatile sig_atomic_t stop;

static void opt(int c, const char *arg)
{
	switch (c) {
	case O_PROM: S.prom = 1; break;
	case O_TOP: S.top = 1; break;
	case O_JSON: S.json = 1; break;
	case O_WATCH: S.watch = opt_secs("--watch", arg, 0.1, 86400); break;
	case O_TIMEOUT: S.timeout = opt_secs("--timeout", arg, 0.01, 3600); break;
	case O_METRICS: S.metrics = opt_secs("--metrics-interval", arg, 0.1, 86400); break;
	default: opt_usage_error("unknown option");
	}
}

void *xrealloc(void *p, size_t n)
{
	if (!(p = realloc(p, n)))
		die(EXIT_SYSERR, "out of memory");
	return p;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void answer_reset(struct answer *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->e[i].name);
	a->n = 0;
	a->err[0] = '\0';
}

/* One line of the answer: 1 at "ok", 0 to read on, -1 with a->err set. */
static int answer_line(struct answer *a, char *line, size_t len)
{
	struct rec r;
	unsigned long v;
	int rc = rec_split(line, len, &r);

	if (rc == 1)
		return 0;
	if (rc == 0 && r.nf == 1 && rec_is(&r, 0, "ok"))
		return 1;
	if (rc == 0 && r.nf >= 1 && rec_is(&r, 0, "error")) {
		rec_unescape_from(&r, 1);
		snprintf(a->err, sizeof a->err, "answered error %s", r.nf > 1 ? r.f[1] : "");
		return -1;
	}
	/* Anything but a stat record is not ours to show: skip it. */
	if (rc != 0 || r.nf != 3 || !rec_is(&r, 0, "stat"))
		return 0;
	if (rec_ulong(&r, 2, (unsigned long)-1, &v) < 0 || rec_unescape(&r, 1) <= 0)
		return 0;
	if (a->n == a->cap) {
		a->cap = a->cap ? 2 * a->cap : 64;
		a->e = xrealloc(a->e, a->cap * sizeof *a->e);
	}
	if (!(a->e[a->n].name = strdup(r.f[1])))
		die(EXIT_SYSERR, "out of memory");
	a->e[a->n++].v = v;
	return 0;
}

/* Send "stats" and read the answer up to "ok", within --timeout. */
static int query(struct answer *a)
{
	double deadline = now() + S.timeout;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int fd, rc = -1;

	answer_reset(a);
	if ((fd = sock_connect(a->path)) < 0) {
		snprintf(a->err, sizeof a->err, "connect: %s", strerror(errno));
		return -1;
	}
	if (write(fd, "stats\n", 6) != 6) {
		snprintf(a->err, sizeof a->err, "write: %s", strerror(errno));
		goto out;
	}
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		double left = deadline - now();
		char *nl;
		ssize_t got;

		while (len && (nl = memchr(buf, '\n', len))) {
			size_t l = (size_t)(nl - buf);

			rc = answer_line(a, buf, l);
			memmove(buf, nl + 1, len - l - 1);
			len -= l + 1;
			if (rc != 0)
				goto out;
		}
		if (left <= 0) {
			snprintf(a->err, sizeof a->err, "no answer within %g seconds", S.timeout);
			break;
		}
		if (poll(&p, 1, (int)(left * 1000) + 1) < 0) {
			if (errno == EINTR && !stop && !top_stop)
				continue;
			snprintf(a->err, sizeof a->err, "poll: %s", strerror(errno));
			break;
		}
		if (!p.revents)
			continue;
		if (cap - len < 4096) {
			if (cap > (64u << 20))
				die(EXIT_SYSERR, "%s: answer too long", a->path);
			cap = cap ? 2 * cap : 8192;
			buf = xrealloc(buf, cap);
		}
		got = read(fd, buf + len, cap - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			/* A peer of another uid is accepted, then closed. */
			snprintf(a->err, sizeof a->err, "%s before \"ok\"%s",
				 got < 0 ? strerror(errno) : "closed",
				 got == 0 && a->n == 0 ? " (a socket of another user?)" : "");
			break;
		}
		len += (size_t)got;
	}
	rc = -1;
out:
	free(buf);
	close(fd);
	return rc > 0 ? 0 : -1;
}

/* ---- table ------------------------------------------------------------------ */

/* Row names: every stat of every socket that answered, in first-seen
 * order, but histogram buckets. */
static char **row_names(size_t *nrows)
{
	char **rows = NULL;
	size_t n = 0;

	for (int i = 0; i < S.na; i++)
		for (size_t j = 0; j < S.a[i].n; j++) {
			unsigned long upper;
			size_t k;

			/* A histogram's buckets are not rows: its percentiles are. */
			if (hist_stat(S.a[i].e[j].name, &upper) || hist_sum_stat(S.a[i].e[j].name))
				continue;
			for (k = 0; k < n && strcmp(rows[k], S.a[i].e[j].name); k++)
				;
			if (k == n) {
				rows = xrealloc(rows, (n + 1) * sizeof *rows);
				rows[n++] = S.a[i].e[j].name;
			}
		}
	*nrows = n;
	return rows;
}

static const struct ent *find(const struct answer *a, const char *name) { return find_in(a->e, a->n, name); }

/* The last round's figures become the previous ones. */
static void keep_previous(struct answer *a)
{
	for (size_t j = 0; j < a->nprev; j++)
		free(a->prev[j].name);
	free(a->prev);
	a->prev = a->e;
	a->nprev = a->n;
	a->prev_at = a->at;
	a->e = NULL;
	a->n = a->cap = 0;
}

/* A cell: the value; with --watch, and a value larger than the round
 * before, also its growth per second. */
static void cell(const struct answer *a, const char *name, char *buf, size_t n)
{
	const struct ent *e = find(a, name), *p = find_in(a->prev, a->nprev, name);

	if (!e)
		snprintf(buf, n, "-");
	else if (p && e->v > p->v && a->at > a->prev_at)
		snprintf(buf, n, "%lu (+%.1f/s)", e->v, (double)(e->v - p->v) / (a->at - a->prev_at));
	else
		snprintf(buf, n, "%lu", e->v);
}

/* One column per socket that answered, one row per stat; "-" where a
 * socket has no such stat. */
static void print_table(void)
{
	size_t nrows, w0 = 4;
	char **rows = row_names(&nrows);
	int *w = xrealloc(NULL, (size_t)(S.na ? S.na : 1) * sizeof *w);
	char num[64];

	for (size_t k = 0; k < nrows; k++)
		if (strlen(rows[k]) > w0)
			w0 = strlen(rows[k]);
	for (int i = 0; i < S.na; i++) {
		w[i] = (int)strlen(S.a[i].path);
		for (size_t k = 0; k < nrows; k++) {
			cell(&S.a[i], rows[k], num, sizeof num);
			if ((int)strlen(num) > w[i])
				w[i] = (int)strlen(num);
		}
	}
	printf("%-*s", (int)w0, "stat");
	for (int i = 0; i < S.na; i++)
		if (!S.a[i].err[0])
			printf("  %*s", w[i], S.a[i].path);
	putchar('\n');
	for (size_t k = 0; k < nrows; k++) {
		printf("%-*s", (int)w0, rows[k]);
		for (int i = 0; i < S.na; i++) {
			if (S.a[i].err[0])
				continue;
			cell(&S.a[i], rows[k], num, sizeof num);
			printf("  %*s", w[i], num);
		}
		putchar('\n');
	}
	free(w);
	free(rows);
}

/* ---- Prometheus --------------------------------------------------------------- */

static void put_ident(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		putchar((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ? c : '_');
	}
}

static void put_label_value(const char *s, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\\' || s[i] == '"')
			printf("\\%c", s[i]);
		else if (s[i] == '\n')
			fputs("\\n", stdout);
		else
			putchar(s[i]);
	}
	putchar('"');
}

/* "a" is mqlb_a; "kind.key.field" (key may hold dots: an address) is
 * mqlb_kind_field{kind="key"}. */
static void put_sample(const char *path, const char *name, unsigned long v)
{
	const char *dot = strchr(name, '.'), *last = strrchr(name, '.');

	fputs("mqlb_", stdout);
	if (dot && last > dot + 1) {
		put_ident(name, (size_t)(dot - name));
		putchar('_');
		put_ident(last + 1, strlen(last + 1));
	} else {
		put_ident(name, strlen(name));
	}
	fputs("{socket=", stdout);
	put_label_value(path, strlen(path));
	if (dot && last > dot + 1) {
		putchar(',');
		put_ident(name, (size_t)(dot - name));
		putchar('=');
		put_label_value(dot + 1, (size_t)(last - dot - 1));
	}
	printf("} %lu\n", v);
}

/* The family a stat belongs to, to keep each family's samples together. */
static void family(const char *name, char *out, size_t n)
{
	const char *dot = strchr(name, '.'), *last = strrchr(name, '.');

	if (dot && last > dot + 1)
		snprintf(out, n, "%.*s_%s", (int)(dot - name), name, last + 1);
	else
		snprintf(out, n, "%s", name);
}

/* The bounds of the histograms in Prometheus, seconds: each bucket of the
 * stage's histogram counts in the first whose bound its upper bound does
 * not pass, so a bound may take values up to 3.2% above it. */
static const char *const prom_le[] = { "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
	"0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "300", "+Inf" };
enum { NLE = sizeof prom_le / sizeof *prom_le };

/* One histogram of one socket: "PREFIX_us" as the stage names it. */
struct phist {
	int sock;
	const char *name;
	size_t len;
	char fam[512];
};

/* "kind.key.lat_us" is mqlb_kind_lat_seconds{kind="key"}; "wait_us" is
 * mqlb_wait_seconds. */
static void phist_family(struct phist *h)
{
	char nm[512];

	snprintf(nm, sizeof nm, "%.*s", (int)(h->len - 3), h->name);
	family(nm, h->fam, sizeof h->fam);
	if (strlen(h->fam) + 8 < sizeof h->fam)
		strcat(h->fam, "_seconds");
}

static void put_hist_sample(const struct phist *h, const char *suffix, const char *le)
{
	const char *name = h->name, *dot = memchr(name, '.', h->len), *last = name + h->len;

	while (dot && last > dot && *last != '.')
		last--;
	fputs("mqlb_", stdout);
	put_ident(h->fam, strlen(h->fam));
	fputs(suffix, stdout);
	fputs("{socket=", stdout);
	put_label_value(S.a[h->sock].path, strlen(S.a[h->sock].path));
	if (dot && last > dot + 1) {
		putchar(',');
		put_ident(name, (size_t)(dot - name));
		putchar('=');
		put_label_value(dot + 1, (size_t)(last - dot - 1));
	}
	if (le)
		printf(",le=\"%s\"", le);
	fputs("} ", stdout);
}

/* Each histogram as a Prometheus histogram: cumulative _bucket samples,
 * _sum in seconds, _count, a family's samples together. */
static void print_prom_hists(void)
{
	struct phist *hs = NULL;
	size_t nh = 0;

	for (int i = 0; i < S.na; i++)
		for (size_t j = 0; j < S.a[i].n; j++) {
			const char *nm = S.a[i].e[j].name;
			unsigned long upper;
			size_t l = hist_stat(nm, &upper), k;

			if (!l)
				continue;
			for (k = nh; k-- > 0;)
				if (hs[k].sock == i && hs[k].len == l && !strncmp(hs[k].name, nm, l))
					break;
			if (k != (size_t)-1)
				continue;
			hs = xrealloc(hs, (nh + 1) * sizeof *hs);
			hs[nh] = (struct phist){ .sock = i, .name = nm, .len = l };
			phist_family(&hs[nh++]);
		}
	for (size_t f = 0; f < nh; f++) {
		int first = 1;

		for (size_t k = 0; k < f && first; k++)
			first = strcmp(hs[k].fam, hs[f].fam) != 0;
		if (!first)
			continue;
		printf("# TYPE mqlb_%s histogram\n", hs[f].fam);
		for (int part = 0; part < 3; part++)
			for (size_t k = f; k < nh; k++) {
				const struct answer *a = &S.a[hs[k].sock];
				unsigned long cum[NLE] = { 0 }, n = 0, sum_us = 0;
				char sname[600];
				const struct ent *e;

				if (strcmp(hs[k].fam, hs[f].fam))
					continue;
				for (size_t j = 0; j < a->n; j++) {
					unsigned long upper;
					size_t l = hist_stat(a->e[j].name, &upper);
					int b = 0;

					if (l != hs[k].len || strncmp(a->e[j].name, hs[k].name, l))
						continue;
					while (b < NLE - 1 && (double)upper > strtod(prom_le[b], NULL) * 1e6 + 0.5)
						b++;
					for (; b < NLE; b++)
						cum[b] += a->e[j].v;
					n += a->e[j].v;
				}
				snprintf(sname, sizeof sname, "%.*s_sum", (int)hs[k].len, hs[k].name);
				if ((e = find_in(a->e, a->n, sname)))
					sum_us = e->v;
				if (part == 0)
					for (int b = 0; b < NLE; b++) {
						put_hist_sample(&hs[k], "_bucket", prom_le[b]);
						printf("%lu\n", cum[b]);
					}
				else if (part == 1) {
					put_hist_sample(&hs[k], "_sum", NULL);
					printf("%.6f\n", (double)sum_us / 1e6);
				} else {
					put_hist_sample(&hs[k], "_count", NULL);
					printf("%lu\n", n);
				}
			}
	}
	free(hs);
}

static void print_prom(void)
{
	size_t nrows;
	char **rows = row_names(&nrows);
	char **fams = xrealloc(NULL, (nrows ? nrows : 1) * sizeof *fams);
	size_t nf = 0;
	char f[512], g[512];

	fputs("# mqlb-stat: 1 when the socket answered stats\n", stdout);
	for (int i = 0; i < S.na; i++) {
		fputs("mqlb_up{socket=", stdout);
		put_label_value(S.a[i].path, strlen(S.a[i].path));
		printf("} %d\n", !S.a[i].err[0]);
	}
	/* Prometheus wants all samples of a family in one group. */
	for (size_t k = 0; k < nrows; k++) {
		size_t m;

		family(rows[k], f, sizeof f);
		for (m = 0; m < nf && strcmp(fams[m], f); m++)
			;
		if (m < nf)
			continue;
		if (!(fams[nf++] = strdup(f)))
			die(EXIT_SYSERR, "out of memory");
		for (size_t r = k; r < nrows; r++) {
			family(rows[r], g, sizeof g);
			if (strcmp(f, g))
				continue;
			for (int i = 0; i < S.na; i++) {
				const struct ent *e = find(&S.a[i], rows[r]);

				if (e)
					put_sample(S.a[i].path, e->name, e->v);
			}
		}
	}
	for (size_t m = 0; m < nf; m++)
		free(fams[m]);
	free(fams);
	free(rows);
	print_prom_hists();
}

/* ---- JSON ------------------------------------------------------------------------ */

static void put_json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* One line a round: {"time":..,"sockets":[{"path":..,"up":true,"stats":{..}},
 * {"path":..,"up":false,"error":..}]}, every figure as the stage gave it. */
static void print_json(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	printf("{\"time\":%lld.%03ld,\"sockets\":[", (long long)ts.tv_sec, ts.tv_nsec / 1000000);
	for (int i = 0; i < S.na; i++) {
		const struct answer *a = &S.a[i];

		fputs(i ? ",{\"path\":" : "{\"path\":", stdout);
		put_json_string(a->path);
		if (a->err[0]) {
			fputs(",\"up\":false,\"error\":", stdout);
			put_json_string(a->err);
			putchar('}');
			continue;
		}
		fputs(",\"up\":true,\"stats\":{", stdout);
		for (size_t j = 0; j < a->n; j++) {
			if (j)
				putchar(',');
			put_json_string(a->e[j].name);
			printf(":%lu", a->e[j].v);
		}
		fputs("}}", stdout);
	}
	fputs("]}\n", stdout);
}

/* ---- publishing ------------------------------------------------------------------ */

/* "[component/id=]path": the topic levels given, or the socket's file name
 * without ".sock" and the host name. */
static void name_socket(struct answer *a, const char *arg, const char *host)
{
	const char *eq = strchr(arg, '='), *slash = strchr(arg, '/');
	char comp[256], id[256];

	if (eq && slash && slash < eq && !memchr(slash + 1, '/', (size_t)(eq - slash - 1))) {
		snprintf(comp, sizeof comp, "%.*s", (int)(slash - arg), arg);
		snprintf(id, sizeof id, "%.*s", (int)(eq - slash - 1), slash + 1);
		a->path = eq + 1;
	} else {
		const char *base = strrchr(arg, '/') ? strrchr(arg, '/') + 1 : arg;
		size_t l = strlen(base);

		if (l > 5 && !strcmp(base + l - 5, ".sock"))
			l -= 5;
		snprintf(comp, sizeof comp, "%.*s", (int)l, base);
		snprintf(id, sizeof id, "%s", host);
	}
	opt_level("component", comp);
	opt_level("id", id);
	snprintf(a->topic, sizeof a->topic, "%s/metrics/%s/%s", S.cf.prefix, comp, id);
}

/* Each socket's figures as "stat NAME VALUE" lines, retained on its topic. */
static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	for (int i = 0; i < S.na && S.mq.connected; i++) {
		struct answer *a = &S.a[i];
		char *buf = NULL;
		size_t len = 0;
		FILE *f;

		if (query(a) < 0) {
			if (!a->failed++)
				errl("%s: %s", a->path, a->err);
			continue;
		}
		if (a->failed)
			infol("%s: answers again", a->path);
		a->failed = 0;
		if (!(f = open_memstream(&buf, &len)))
			die(EXIT_SYSERR, "out of memory");
		for (size_t j = 0; j < a->n; j++) {
			const char *nm = a->e[j].name;
			char esc[1024];

			if (rec_escaped_len(nm, strlen(nm)) >= sizeof esc)
				continue;
			esc[rec_escape(esc, nm, strlen(nm), NULL)] = '\0';
			fprintf(f, "stat %s %lu\n", esc, a->e[j].v);
		}
		if (fclose(f) != 0)
			die(EXIT_SYSERR, "out of memory");
		if (mq_publish(&S.mq, NULL, a->topic, len, buf, 0, 1, NULL) != 0)
			warnl("%s: cannot publish", a->topic);
		free(buf);
	}
}

/* Publish at once on each connection, from the loop, not inside the
 * libmosquitto callback. */
static void on_connected(struct mq *mq, int first, void *arg) { ev_feed_event(S.loop, &S.tick, EV_TIMER); }

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	mq_disconnect(&S.mq);
	ev_break(loop, EVBREAK_ALL);
}

static int publish_loop(void)
{
	static const struct mq_cb cb = { .connected = on_connected };

	S.loop = EV_DEFAULT;
	mq_init(&S.mq, S.loop, &S.cf.mq, &cb, NULL);
	ev_timer_init(&S.tick, tick_cb, S.metrics, S.metrics);
	ev_timer_start(S.loop, &S.tick);
	ev_signal_init(&S.sigint, stop_cb, SIGINT);
	ev_signal_init(&S.sigterm, stop_cb, SIGTERM);
	ev_signal_start(S.loop, &S.sigint);
	ev_signal_start(S.loop, &S.sigterm);
	mq_start(&S.mq);
	ev_run(S.loop, 0);
	mq_destroy(&S.mq);
	return EXIT_OK;
}

/* ---- main ----------------------------------------------------------------------- */

int query_round(void)
{
	int failed = 0;

	for (int i = 0; i < S.na; i++) {
		keep_previous(&S.a[i]);
		failed |= query(&S.a[i]) < 0;
		S.a[i].at = now();
	}
	return failed;
}

static int round_once(void)
{
	int failed = query_round();

	if (S.watch > 0) {
		time_t t = time(NULL);
		char ts[64];

		strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", localtime(&t));
		/* Home and clear: the whole screen is redrawn each round. */
		if (!S.json)
			printf("\033[H\033[2Jmqlb-stat every %gs  %s\n\n", S.watch, ts);
	}
	if (S.json)
		print_json();
	else if (S.prom)
		print_prom();
	else
		print_table();
	if (fflush(stdout) == EOF || ferror(stdout))
		die(EXIT_SYSERR, "cannot write output: %s", strerror(errno));
	for (int i = 0; i < S.na; i++)
		if (S.a[i].err[0])
			errl("%s: %s", S.a[i].path, S.a[i].err);
	return failed ? EXIT_NEGATIVE : EXIT_OK;
}

static void on_signal(int sig) { stop = 1; }

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	int first, rc;

	first = opt_parse(&argc, &argv, OPT_MQTT, "", longopts, opt, usage, &S.cf);
	if (first >= argc)
		opt_usage_error("which socket?");
	if (S.metrics > 0 && (S.prom || S.watch > 0))
		opt_usage_error("--metrics-interval publishes: no --prom or --watch with it");
	if (S.metrics > 0 && S.top)
		opt_usage_error("--metrics-interval publishes: no --top with it");
	if (S.prom + S.top + S.json > 1)
		opt_usage_error("one of --prom, --top and --json");
	if (S.metrics > 0 && S.json)
		opt_usage_error("--metrics-interval publishes: no --json with it");
	S.na = argc - first;
	S.a = calloc((size_t)S.na, sizeof *S.a);
	if (!S.a)
		die(EXIT_SYSERR, "out of memory");
	for (int i = 0; i < S.na; i++)
		S.a[i].path = argv[first + i];
	signal(SIGPIPE, SIG_IGN);
	if (S.metrics > 0) {
		char host[256] = "";

		if (gethostname(host, sizeof host - 1) < 0 || !*host)
			strcpy(host, "localhost");
		/* A dotted host name is a valid level; only '/' '+' '#' are not. */
		for (char *c = host; *c; c++)
			if (strchr("/+#", *c))
				*c = '_';
		for (int i = 0; i < S.na; i++)
			name_socket(&S.a[i], argv[first + i], host);
		return publish_loop();
	}
	if (S.top)
		return top_run(S.a, S.na, S.watch > 0 ? S.watch : 1);
	if (S.watch > 0) {
		/* No SA_RESTART: a signal ends the sleep between rounds at once. */
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
	}
	rc = round_once();
	while (S.watch > 0 && !stop) {
		struct timespec ts = { (time_t)S.watch, (long)((S.watch - (time_t)S.watch) * 1e9) };

		if (nanosleep(&ts, NULL) < 0 && stop)
			break;
		if (!stop)
			rc = round_once();
	}
	/* --watch ends on SIGINT or SIGTERM: a clean shutdown. */
	return S.watch > 0 ? EXIT_OK : rc;
}
