/* SPDX-License-Identifier: MIT */
/* record.c: split, escape and unescape line records (PROTOCOL.md, section 2). */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "record.h"

static const char hexd[] = "0123456789ABCDEF";

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int rec_split(char *line, size_t n, struct rec *r)
{
	size_t i = 0;

	if (n > 0 && line[n - 1] == '\r')
		n--;
	r->nf = 0;
	while (i < n && line[i] == ' ')
		i++;
	if (i == n || line[i] == '#')
		return 1;
	while (i < n) {
		size_t s = i;

		if (r->nf == REC_MAXF)
			return -1;
		while (i < n && line[i] != ' ')
			i++;
		r->f[r->nf] = line + s;
		r->len[r->nf] = i - s;
		r->nf++;
		/* Runs of spaces separate like one, as awk splits them. */
		while (i < n && line[i] == ' ')
			line[i++] = '\0';
	}
	line[n] = '\0';
	return 0;
}

int rec_uuid_ok(const char *s, size_t n)
{
	if (n != 36)
		return 0;
	for (size_t i = 0; i < 36; i++) {
		unsigned char c = (unsigned char)s[i];

		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return 0;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return 0;
		}
	}
	return 1;
}

int rec_field_ok(const struct rec *r, int i)
{
	const unsigned char *p = (const unsigned char *)r->f[i];
	size_t n = r->len[i];

	for (size_t k = 0; k < n; k++) {
		if (p[k] == '%') {
			if (k + 2 >= n || hexval(p[k + 1]) < 0 || hexval(p[k + 2]) < 0)
				return 0;
			k += 2;
		} else if (rec_must_escape(p[k])) {
			return 0;
		}
	}
	return n > 0;
}

static long unescape(char *p, size_t n)
{
	size_t i, o = 0;

	if (n == 1 && p[0] == '-') {
		p[0] = '\0';
		return 0;
	}
	for (i = 0; i < n; i++) {
		if (p[i] != '%') {
			p[o++] = p[i];
			continue;
		}
		if (i + 2 >= n)
			return -1;
		int h = hexval((unsigned char)p[i + 1]), l = hexval((unsigned char)p[i + 2]);
		if (h < 0 || l < 0)
			return -1;
		p[o++] = (char)(h << 4 | l);
		i += 2;
	}
	p[o] = '\0';
	return (long)o;
}

long rec_unescape(struct rec *r, int i)
{
	long n = unescape(r->f[i], r->len[i]);

	if (n >= 0)
		r->len[i] = (size_t)n;
	return n;
}

int rec_unescape_from(struct rec *r, int first)
{
	for (int i = first; i < r->nf; i++)
		if (rec_unescape(r, i) < 0)
			return i;
	return -1;
}

size_t rec_escaped_len(const void *p, size_t n)
{
	const unsigned char *s = p;
	size_t len = n;

	if (n == 0)
		return 1;
	if (n == 1 && s[0] == '-')
		return 3;
	for (size_t i = 0; i < n; i++)
		if (rec_must_escape(s[i]) || s[i] == ',' || s[i] == '=')
			len += 2; /* an upper bound that also covers props */
	return len;
}

size_t rec_escape(char *dst, const void *p, size_t n, const char *extra)
{
	const unsigned char *s = p;
	size_t o = 0;

	if (n == 0) {
		dst[0] = '-';
		return 1;
	}
	if (n == 1 && s[0] == '-') {
		memcpy(dst, "%2D", 3);
		return 3;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = s[i];

		if (rec_must_escape(c) || (extra && c && strchr(extra, c))) {
			dst[o++] = '%';
			dst[o++] = hexd[c >> 4];
			dst[o++] = hexd[c & 15];
		} else {
			dst[o++] = (char)c;
		}
	}
	return o;
}

int rec_is(const struct rec *r, int i, const char *s)
{
	size_t n = strlen(s);

	return i < r->nf && r->len[i] == n && memcmp(r->f[i], s, n) == 0;
}

int rec_ulong(const struct rec *r, int i, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;

	if (i >= r->nf || r->len[i] == 0 || r->len[i] > 20)
		return -1;
	for (size_t k = 0; k < r->len[i]; k++) {
		unsigned char c = (unsigned char)r->f[i][k];

		if (c < '0' || c > '9')
			return -1;
		if ((unsigned long)(c - '0') > max || v > (max - (c - '0')) / 10)
			return -1;
		v = v * 10 + (c - '0');
	}
	*out = v;
	return 0;
}

int props_next(char **cursor, char **name, size_t *nlen, char **value, size_t *vlen)
{
	char *p = *cursor, *end, *eq;
	long n;

	if (*p == '\0')
		return 0;
	end = strchr(p, ',');
	if (end)
		*end = '\0';
	*cursor = end ? end + 1 : p + strlen(p);
	eq = strchr(p, '=');
	if (!eq || eq == p)
		return -1;
	*eq = '\0';
	/* A NUL in a name would make "rt%00x" read as "rt". */
	if ((n = unescape(p, (size_t)(eq - p))) <= 0 || strlen(p) != (size_t)n)
		return -1;
	*name = p;
	*nlen = (size_t)n;
	if ((n = unescape(eq + 1, strlen(eq + 1))) < 0)
		return -1;
	*value = eq + 1;
	*vlen = (size_t)n;
	return 1;
}
