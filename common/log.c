/* SPDX-License-Identifier: MIT */
/* log.c: diagnostics as "prog: level: text", one line each, with a syslog
 * priority prefix when stderr goes to journald. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

static const char *prog = "mqlb";
static int threshold = L_WARN;
static int journal;

/* Only prefix priorities when stderr really is the journal stream:
 * JOURNAL_STREAM is "device:inode" of it, and a child whose stderr was
 * redirected inherits the variable all the same. */
static int stderr_is_journal(void)
{
	const char *v = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	char end;

	return v && sscanf(v, "%llu:%llu%c", &dev, &ino, &end) == 2 && fstat(2, &st) == 0 &&
	       (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(const char *progname)
{
	const char *slash = strrchr(progname, '/');

	prog = slash ? slash + 1 : progname;
	journal = stderr_is_journal();
}

const char *log_progname(void) { return prog; }
void log_set_level(int level) { threshold = level; }
int log_level(void) { return threshold; }

void log_vmsg(int level, const char *fmt, va_list ap)
{
	static const char *names[] = {
		[L_ERR] = "error", [L_WARN] = "warning",
		[L_INFO] = "info", [L_DEBUG] = "debug",
	};
	char buf[1024];
	int n = 0, m;

	if (level > threshold)
		return;
	if (journal)
		n = snprintf(buf, sizeof buf, "<%d>", level);
	n += snprintf(buf + n, sizeof buf - n, "%s: %s: ", prog, names[level]);
	m = vsnprintf(buf + n, sizeof buf - n, fmt, ap);
	if (m < 0)
		m = 0;
	n += m;
	if (n > (int)sizeof buf - 2)
		n = sizeof buf - 2;
	/* A diagnostic is exactly one line, whatever the text held. */
	for (int i = 0; i < n; i++)
		if (buf[i] == '\n' || buf[i] == '\r')
			buf[i] = ' ';
	buf[n++] = '\n';
	fwrite(buf, 1, n, stderr);
}

void log_msg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

void die(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(L_ERR, fmt, ap);
	va_end(ap);
	exit(code);
}
