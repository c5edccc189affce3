/* SPDX-License-Identifier: MIT */
/* opt.c: one parser for the options every mqlb command shares, strict
 * numbers, options files (-o), and the usage-error exit. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "collect.h"
#include "log.h"
#include "opt.h"

enum {
	O_CAFILE = 1000, O_CAPATH, O_CERT, O_KEY, O_INSECURE, O_PREFIX, O_QUIET,
	O_HELP, O_VERSION, O_LISTEN, O_SOCKMODE, O_OUTPUT, O_READY, O_RETRIES, O_COLLECT,
};

struct shared {
	struct option o;
	unsigned group;
};

static const struct shared shared[] = {
	{ { "host", required_argument, NULL, 'h' }, OPT_MQTT },
	{ { "port", required_argument, NULL, 'p' }, OPT_MQTT },
	{ { "username", required_argument, NULL, 'u' }, OPT_MQTT },
	{ { "pw", required_argument, NULL, 'P' }, OPT_MQTT },
	{ { "id", required_argument, NULL, 'i' }, OPT_MQTT },
	{ { "qos", required_argument, NULL, 'q' }, OPT_QOS },
	{ { "protocol-version", required_argument, NULL, 'V' }, OPT_MQTT },
	{ { "keepalive", required_argument, NULL, 'k' }, OPT_MQTT },
	{ { "cafile", required_argument, NULL, O_CAFILE }, OPT_MQTT },
	{ { "capath", required_argument, NULL, O_CAPATH }, OPT_MQTT },
	{ { "cert", required_argument, NULL, O_CERT }, OPT_MQTT },
	{ { "key", required_argument, NULL, O_KEY }, OPT_MQTT },
	{ { "insecure", no_argument, NULL, O_INSECURE }, OPT_MQTT },
	{ { "prefix", required_argument, NULL, O_PREFIX }, OPT_MQTT },
	{ { "retries", required_argument, NULL, O_RETRIES }, OPT_MQTT },
	{ { "listen", required_argument, NULL, O_LISTEN }, OPT_LISTEN },
	{ { "socket-mode", required_argument, NULL, O_SOCKMODE }, OPT_LISTEN },
	{ { "output", required_argument, NULL, O_OUTPUT }, OPT_OUTPUT },
	{ { "ready-fd", required_argument, NULL, O_READY }, OPT_READY },
	{ { "collect", required_argument, NULL, O_COLLECT }, OPT_COLLECT },
	{ { "verbose", no_argument, NULL, 'v' }, 0 },
	{ { "quiet", no_argument, NULL, O_QUIET }, 0 },
	{ { "help", no_argument, NULL, O_HELP }, 0 },
	{ { "version", no_argument, NULL, O_VERSION }, 0 },
	{ { "options-file", required_argument, NULL, 'o' }, 0 },
};

static const char *usage_text = "";

void opt_usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(L_ERR, fmt, ap);
	va_end(ap);
	fputs(usage_text, stderr);
	exit(EXIT_USAGE);
}

long opt_long(const char *name, const char *arg, long min, long max)
{
	char *end;
	long v;

	/* strtol alone would take " 12" and "+12": only digits and a sign. */
	errno = 0;
	v = strtol(arg, &end, 10);
	if (errno || end == arg || *end || arg[strspn(arg, "-0123456789")] || v < min || v > max)
		opt_usage_error("%s: bad number \"%s\" (%ld to %ld)", name, arg, min, max);
	return v;
}

static int parse_secs(const char *arg, double *out)
{
	char *end;
	double v;

	/* Plain decimals: strtod would also take " 2", "0x10" and "1e3". */
	errno = 0;
	v = strtod(arg, &end);
	if (errno || end == arg || !isfinite(v) || (size_t)(end - arg) != strspn(arg, "-.0123456789"))
		return -1;
	if (strcmp(end, "ms") == 0)
		v /= 1000;
	else if (*end && strcmp(end, "s") != 0)
		return -1;
	*out = v;
	return 0;
}

double opt_secs(const char *name, const char *arg, double min, double max)
{
	double v;

	if (parse_secs(arg, &v) < 0 || v < min || v > max)
		opt_usage_error("%s: bad duration \"%s\" (seconds, %g to %g; or with ms)", name, arg, min, max);
	return v;
}

int opt_secs_list(const char *name, const char *arg, double *out, int max)
{
	char buf[256], *save = NULL, *tok;
	int n = 0;

	if (strlen(arg) >= sizeof buf)
		opt_usage_error("%s: list too long", name);
	strcpy(buf, arg);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (n == max)
			opt_usage_error("%s: at most %d values", name, max);
		if (parse_secs(tok, &out[n]) < 0 || out[n] <= 0 || out[n] > 3600)
			opt_usage_error("%s: bad duration \"%s\" in \"%s\"", name, tok, arg);
		n++;
	}
	if (n == 0)
		opt_usage_error("%s: empty list", name);
	return n;
}

const char *opt_level(const char *name, const char *arg)
{
	if (!*arg || strpbrk(arg, "/+#") || strlen(arg) > 256)
		opt_usage_error("%s: \"%s\" is not a topic level (not empty; no / + #)", name, arg);
	return arg;
}

/* Read an options file into extra argv words: "--name value" or
 * "name value" per line, '#' comments, blank lines ignored. */
static void read_options_file(const char *path, int *argc, char ***argv, int at)
{
	FILE *f = fopen(path, "r");
	char line[4096];
	char **words = NULL;
	int n = 0, cap = 0, lineno = 0;
	static int nfiles;
	static char **spliced;

	/* A file that names itself (or two that name each other) would splice
	 * words in forever. */
	if (++nfiles > 16) {
		if (f)
			fclose(f);
		opt_usage_error("-o %s: more than 16 options files; do they include each other?", path);
	}
	if (!f)
		opt_usage_error("-o: cannot open %s: %s", path, strerror(errno));
	while (fgets(line, sizeof line, f)) {
		char *p = line, *v;
		size_t l;

		lineno++;
		l = strcspn(p, "\r\n");
		p[l] = '\0';
		while (*p == ' ' || *p == '\t')
			p++;
		if (!*p || *p == '#')
			continue;
		v = p + strcspn(p, " \t");
		if (*v) {
			*v++ = '\0';
			while (*v == ' ' || *v == '\t')
				v++;
		}
		if (n + 2 >= cap) {
			cap = cap ? cap * 2 : 16;
			words = realloc(words, (size_t)cap * sizeof *words);
			if (!words)
				die(EXIT_SYSERR, "out of memory");
		}
		if (*p != '-') {
			char *w = malloc(strlen(p) + 3);

			if (!w)
				die(EXIT_SYSERR, "out of memory");
			sprintf(w, "%s%s", strlen(p) == 1 ? "-" : "--", p);
			words[n++] = w;
		} else {
			words[n++] = strdup(p);
		}
		if (*v)
			words[n++] = strdup(v);
	}
	fclose(f);
	/* Splice the words in where -o stood, so later arguments still win. */
	char **nv = malloc((size_t)(*argc + n + 1) * sizeof *nv);

	if (!nv)
		die(EXIT_SYSERR, "out of memory");
	memcpy(nv, *argv, (size_t)at * sizeof *nv);
	memcpy(nv + at, words, (size_t)n * sizeof *nv);
	memcpy(nv + at + n, *argv + at, (size_t)(*argc - at + 1) * sizeof *nv);
	free(words);
	/* The argv an earlier file made is ours to free; main's is not. */
	if (*argv == spliced)
		free(spliced);
	spliced = nv;
	*argc += n;
	*argv = nv;
}

static void set_defaults(struct conf *cf)
{
	if (!cf->mq.host)
		cf->mq.host = "localhost";
	if (!cf->mq.port)
		cf->mq.port = 1883;
	if (!cf->mq.version)
		cf->mq.version = MQTT_PROTOCOL_V5;
	if (!cf->mq.keepalive)
		cf->mq.keepalive = 10;
	if (!cf->prefix)
		cf->prefix = "lb";
	if (!cf->socket_mode)
		cf->socket_mode = 0600;
	cf->mq.clean = cf->mq.clean || !cf->mq.id;
	cf->ready_fd = cf->ready_fd ? cf->ready_fd : -1;
}

void opt_collect(const struct conf *cf, struct ev_loop *loop)
{
	collect_start(loop, cf->collect);
}

int opt_parse(int *argcp, char ***argvp, unsigned groups, const char *shortopts,
	      const struct option *longopts, opt_fn *fn, const char *usage, struct conf *cf)
{
	int argc = *argcp;
	char **argv = *argvp;
	struct option all[64];
	char sopts[128];
	int n = 0, c;

	usage_text = usage;
	log_init(argv[0]);
	for (size_t i = 0; i < sizeof shared / sizeof *shared; i++)
		if (!shared[i].group || (shared[i].group & groups))
			all[n++] = shared[i].o;
	for (; longopts && longopts->name; longopts++)
		all[n++] = *longopts;
	memset(&all[n], 0, sizeof all[n]);
	snprintf(sopts, sizeof sopts, ":%s%s%so:v", groups & OPT_MQTT ? "h:p:u:P:i:V:k:" : "",
		 groups & OPT_QOS ? "q:" : "", shortopts ? shortopts : "");
	cf->ready_fd = 0;
	cf->collect = groups & OPT_COLLECT ? OPT_COLLECT_DEFAULT : 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, sopts, all, NULL)) != -1) {
		const char *name = argv[optind - 1];

		switch (c) {
		case 'h': cf->mq.host = optarg; break;
		case 'p': cf->mq.port = (int)opt_long("-p", optarg, 1, 65535); break;
		case 'u': cf->mq.user = optarg; break;
		case 'P': cf->mq.pass = optarg; break;
		case 'i':
			if (!*optarg || strlen(optarg) > 65535)
				opt_usage_error("-i: bad client id \"%s\"", optarg);
			cf->mq.id = optarg;
			break;
		case 'q': cf->mq.qos = (int)opt_long("-q", optarg, 0, 2); break;
		case 'V':
			if (!strcmp(optarg, "5") || !strcmp(optarg, "mqttv5"))
				cf->mq.version = MQTT_PROTOCOL_V5;
			else if (!strcmp(optarg, "311") || !strcmp(optarg, "mqttv311"))
				cf->mq.version = MQTT_PROTOCOL_V311;
			else
				opt_usage_error("-V: unknown protocol version \"%s\" (5 or 311)", optarg);
			break;
		case 'k': cf->mq.keepalive = (int)opt_long("-k", optarg, 5, 65535); break;
		case O_CAFILE: cf->mq.cafile = optarg; break;
		case O_CAPATH: cf->mq.capath = optarg; break;
		case O_CERT: cf->mq.cert = optarg; break;
		case O_KEY: cf->mq.key = optarg; break;
		case O_INSECURE: cf->mq.insecure = 1; break;
		case O_RETRIES: cf->mq.retries = (int)opt_long("--retries", optarg, 0, 1000000); break;
		case O_PREFIX: cf->prefix = opt_level("--prefix", optarg); break;
		case O_LISTEN: cf->listen = optarg; break;
		case O_SOCKMODE: {
			char *end;
			long m = strtol(optarg, &end, 8);

			if (*end || end == optarg || m < 0 || m > 0777)
				opt_usage_error("--socket-mode: bad octal mode \"%s\"", optarg);
			cf->socket_mode = (mode_t)m;
			break;
		}
		case O_OUTPUT: cf->output = optarg; break;
		case O_READY: cf->ready_fd = (int)opt_long("--ready-fd", optarg, 3, 1 << 20); break;
		case O_COLLECT: cf->collect = opt_secs("--collect", optarg, 0, 0.1); break;
		case 'v': log_set_level(log_level() < L_INFO ? L_INFO : L_DEBUG); break;
		case O_QUIET: log_set_level(L_ERR); break;
		case O_HELP: fputs(usage, stdout); exit(EXIT_OK);
		case O_VERSION: printf("%s %s\n", log_progname(), PACKAGE_VERSION); exit(EXIT_OK);
		case 'o':
			read_options_file(optarg, &argc, &argv, optind);
			break;
		case ':': opt_usage_error("%s: needs a value", name);
		case '?':
			if (optopt)
				opt_usage_error("unknown option -%c", optopt);
			opt_usage_error("unknown option %s", name);
		default: fn(c, optarg); break;
		}
	}
	if ((cf->mq.cert != NULL) != (cf->mq.key != NULL))
		opt_usage_error("--cert and --key go together");
	if ((cf->mq.cert || cf->mq.insecure) && !cf->mq.cafile && !cf->mq.capath)
		opt_usage_error("--cert, --key and --insecure need --cafile or --capath");
	set_defaults(cf);
	*argcp = argc;
	*argvp = argv;
	return optind;
}
