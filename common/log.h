/* SPDX-License-Identifier: MIT */
/* log.h: one-line diagnostics on stderr (journald priorities under systemd)
 * and the exit-code table every mqlb command shares. */
#ifndef MQLB_LOG_H
#define MQLB_LOG_H

#include <stdarg.h>

/* Exit status, the same table in every man page. */
enum {
	EXIT_OK = 0,       /* success, or clean shutdown after draining */
	EXIT_NEGATIVE = 1, /* a negative answer */
	EXIT_USAGE = 2, /* usage error */
	EXIT_UNREACH = 69, /* broker or peer unreachable after the retries allowed */
	EXIT_SYSERR = 111, /* system error */
};

enum log_level { L_ERR = 3, L_WARN = 4, L_INFO = 6, L_DEBUG = 7 };

void log_init(const char *progname);
const char *log_progname(void);
/* -v raises, --quiet lowers the threshold; default shows warnings and errors. */
void log_set_level(int level);
int log_level(void);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(int level, const char *fmt, va_list ap);

#define warnl(...) log_msg(L_WARN, __VA_ARGS__)
#define errl(...) log_msg(L_ERR, __VA_ARGS__)
#define infol(...) log_msg(L_INFO, __VA_ARGS__)
#define debugl(...) log_msg(L_DEBUG, __VA_ARGS__)

/* Print an error line and exit with code. */
void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

#endif
