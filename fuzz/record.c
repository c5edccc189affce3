/* SPDX-License-Identifier: MIT */
/* fuzz/record.c: libFuzzer target for the record codec (common/record.c):
 * split, unescape, escape, numbers and props_next on any bytes, with round
 * trips that must give back what went in. */
#include "config.h"

#include "fuzz.h"

static char *dup0(const void *p, size_t n)
{
	char *s = malloc(n + 1);

	if (!s)
		abort();
	memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

/* escape(data) is one field that decodes back to data, with or without the
 * extra set that props use. */
static void escape_round_trip(const uint8_t *data, size_t size, const char *extra)
{
	size_t max = rec_escaped_len(data, size);
	char *line = malloc(max + 3), *name, *value, *cur;
	struct rec r;
	size_t n, nl, vl;

	if (!line)
		abort();
	line[0] = 'v';
	line[1] = ' ';
	n = rec_escape(line + 2, data, size, extra);
	if (n > max || n == 0)
		abort();
	for (size_t i = 0; i < n; i++)
		if (rec_must_escape((unsigned char)line[2 + i]) && line[2 + i] != '%')
			abort();
	if (rec_split(line, n + 2, &r) != 0 || r.nf != 2 || r.len[1] != n)
		abort();
	if (rec_unescape(&r, 1) != (long)size || memcmp(r.f[1], data, size))
		abort();
	if (!extra) {
		free(line);
		return;
	}
	/* As a props value: "n=<escaped>" walks to one pair, name n. */
	line[0] = 'n';
	line[1] = '=';
	n = 2 + rec_escape(line + 2, data, size, extra);
	line[n] = '\0';
	cur = line;
	if (props_next(&cur, &name, &nl, &value, &vl) != 1 || strcmp(name, "n") || vl != size ||
	    memcmp(value, data, size) || props_next(&cur, &name, &nl, &value, &vl) != 0)
		abort();
	free(line);
}

/* data as a line: whatever splits decodes, and what decodes escapes back to
 * something that decodes to the same bytes. */
static void split_line(const uint8_t *data, size_t size)
{
	char *line = dup0(data, size);
	struct rec r;
	int rc = rec_split(line, size, &r);

	if (rc == -1 || rc == 1) {
		free(line);
		return;
	}
	if (rc != 0 || r.nf < 1 || r.nf > REC_MAXF)
		abort();
	for (int i = 0; i < r.nf; i++) {
		unsigned long v;

		if (r.len[i] == 0 || memchr(r.f[i], ' ', r.len[i]) || r.f[i] < line ||
		    r.f[i] + r.len[i] > line + size)
			abort();
		if (rec_ulong(&r, i, 1000000, &v) == 0 && v > 1000000)
			abort();
		rec_is(&r, i, "msg");
		if (rec_unescape(&r, i) >= 0) {
			size_t m = rec_escaped_len(r.f[i], r.len[i]);
			char *e = malloc(m + 3);
			struct rec r2;

			if (!e)
				abort();
			/* after a verb: a field of its own may start with '#' */
			memcpy(e, "v ", 2);
			m = 2 + rec_escape(e + 2, r.f[i], r.len[i], NULL);
			e[m] = '\0';
			if (rec_split(e, m, &r2) != 0 || r2.nf != 2 || rec_unescape(&r2, 1) != (long)r.len[i] ||
			    memcmp(r2.f[1], r.f[i], r.len[i]))
				abort();
			free(e);
		}
	}
	free(line);
}

static void walk_props(const uint8_t *data, size_t size)
{
	char *s = dup0(data, size), *cur = s, *name, *value;
	size_t nl, vl;
	int rc, k = 0;

	while ((rc = props_next(&cur, &name, &nl, &value, &vl)) == 1) {
		if (cur < s || cur > s + size || nl > size || vl > size)
			abort();
		if (++k > (int)size + 1)
			abort(); /* each pair eats at least one byte */
	}
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	escape_round_trip(data, size, NULL);
	escape_round_trip(data, size, ",=");
	split_line(data, size);
	walk_props(data, size);
	return 0;
}
