/* SPDX-License-Identifier: MIT */
/* opt.h: command-line options shared by every mqlb command (mosquitto_sub's
 * letters for MQTT), strict number parsing, and usage errors. */
#ifndef MQLB_OPT_H
#define MQLB_OPT_H

#include <getopt.h>
#include <sys/types.h>

#include "mqtt.h"

/* Which groups of shared options a command takes. */
enum {
	OPT_MQTT = 1 << 0,   /* -h -p -u -P -i -V -k TLS --prefix */
	OPT_LISTEN = 1 << 1, /* --listen --socket-mode */
	OPT_OUTPUT = 1 << 2, /* --output */
	OPT_READY = 1 << 3,  /* --ready-fd */
	OPT_QOS = 1 << 4,    /* -q: where a QoS is the user's to choose */
	OPT_COLLECT = 1 << 5, /* --collect: the stages of the pipeline */
};

/* --collect's default: the most a busy loop gathers input before its next
 * turn (libev's I/O collect interval, following the load: collect.h). A
 * slot comes back to the balancer once per round through three stages'
 * gathers: at 2 ms that, not CPU, capped trivial jobs at 15000 a second
 * (contrib/bench/README, 2026-12-06 evening). */
#define OPT_COLLECT_DEFAULT 0.0005

struct conf {
	struct mq_opts mq;
	const char *prefix;
	int ready_fd;
	const char *listen;
	const char *output;
	mode_t socket_mode;
	double collect; /* --collect, seconds (OPT_COLLECT_DEFAULT unless given) */
};

/* Apply --collect to the loop: after a crowded turn, the loop waits up to
 * that long before it polls again, so that the next turn takes all that
 * came meanwhile; after turns of one message, not at all (collect.h). */
void opt_collect(const struct conf *cf, struct ev_loop *loop);

/* A command's own option: its handler gets the getopt value and argument. */
typedef void opt_fn(int c, const char *arg);

/* Parse argv. Shared options fill cf; everything else goes to fn. --help
 * prints usage to stdout and exits 0; bad usage prints the reason and the
 * usage to stderr and exits 2. Returns optind; argc/argv may be replaced. -o FILE reads options from
 * FILE (one per line, '#' comments) as if given at that point. */
int opt_parse(int *argc, char ***argv, unsigned groups, const char *shortopts,
	      const struct option *longopts, opt_fn *fn, const char *usage, struct conf *cf);

/* Report a usage error (one line plus the usage text) and exit 2. */
void opt_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Strict parsers: the whole argument, within [min, max], else usage error
 * naming the option. */
long opt_long(const char *name, const char *arg, long min, long max);
/* Seconds as a decimal ("0.25", "2"), or with a suffix "ms"/"s". */
double opt_secs(const char *name, const char *arg, double min, double max);
/* A comma-separated list of seconds; returns the count (at most max). */
int opt_secs_list(const char *name, const char *arg, double *out, int max);
/* A topic level: not empty, no '/', '+', '#'. Exits 2 otherwise. */
const char *opt_level(const char *name, const char *arg);

#endif
