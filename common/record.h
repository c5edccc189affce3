/* SPDX-License-Identifier: MIT */
/* record.h: the line-record codec of PROTOCOL.md section 2 (percent-escaped,
 * space-separated fields, "-" for empty). */
#ifndef MQLB_RECORD_H
#define MQLB_RECORD_H

#include <stddef.h>

#define REC_MAXF 16

/* A split record. Fields point into the caller's line and stay escaped
 * until rec_unescape() is called on them, so a stage can pass a field on
 * byte for byte without decoding and re-encoding it. */
struct rec {
	int nf;
	char *f[REC_MAXF];
	size_t len[REC_MAXF];
};

/* Bytes that must be escaped in a field. */
static inline int rec_must_escape(unsigned char c)
{
	return c <= 0x20 || c == '%' || c == 0x7f;
}

/* Split line[0..n) at spaces (a trailing '\r' is dropped), writing NULs in
 * place of separators. Returns 0 for a record, 1 for a blank or comment line
 * (nothing to do), -1 when the line has more than REC_MAXF fields. */
int rec_split(char *line, size_t n, struct rec *r);

/* s[0..n) is a uuid as mqlb writes them: 36 bytes, lower-case hex and
 * dashes at 8, 13, 18 and 23. */
int rec_uuid_ok(const char *s, size_t n);

/* Field i is well-formed escaped text, as a stage that copies it out
 * without decoding must check: no raw byte that needs escaping, each %
 * followed by two hex digits. */
int rec_field_ok(const struct rec *r, int i);

/* Decode field i in place ("-" becomes empty, %XX its byte); the field stays
 * NUL-terminated. Returns the decoded length, or -1 on a bad escape. */
long rec_unescape(struct rec *r, int i);

/* Decode every field from first on; on error returns the index of the bad
 * field, else -1. */
int rec_unescape_from(struct rec *r, int first);

/* Escaped length of p[0..n) (at least 1: "-" for empty). */
size_t rec_escaped_len(const void *p, size_t n);

/* Escape p[0..n) into dst, which has room for rec_escaped_len() bytes
 * (plus 0 for extra set, see below). Returns bytes written. With extra
 * non-NULL, bytes in that string are escaped too (used for props). */
size_t rec_escape(char *dst, const void *p, size_t n, const char *extra);

/* Does the field equal the C string s (compared escaped or not, as is)? */
int rec_is(const struct rec *r, int i, const char *s);

/* Strict numbers: whole field, in range; -1 on error. */
int rec_ulong(const struct rec *r, int i, unsigned long max, unsigned long *out);

/* MQTT 5 properties field: name=value pairs joined by ','. props_next()
 * walks an unescaped copy; returns 0 at end, 1 with name/value set (both
 * decoded in place, NUL-terminated), -1 on a malformed pair. */
int props_next(char **cursor, char **name, size_t *nlen, char **value, size_t *vlen);

#endif
