/* SPDX-License-Identifier: MIT */
/* recodec: exercises the record codec from tests.
 *   recodec escape      stdin bytes -> one escaped field on stdout
 *   recodec unescape N  record lines on stdin -> raw bytes of field N
 *   recodec split       record lines -> field count and each field decoded,
 *                       one per line, "error" for malformed lines
 *   recodec props       props field on stdin -> name=value lines
 *   recodec reprops     props field -> MQTT 5 properties -> props field
 *                       (props_parse then props_write), "error: why" */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"
#include "props.h"
#include "record.h"

static char *slurp(size_t *n)
{
	size_t cap = 1 << 16;
	char *b = malloc(cap + 1);

	*n = 0;
	for (size_t r; b && (r = fread(b + *n, 1, cap - *n, stdin)) > 0;) {
		*n += r;
		if (*n == cap)
			b = realloc(b, (cap *= 2) + 1);
	}
	if (!b)
		exit(111);
	b[*n] = '\0';
	return b;
}

int main(int argc, char **argv)
{
	size_t n;
	char *in;

	if (argc < 2)
		return 2;
	in = slurp(&n);
	if (!strcmp(argv[1], "escape")) {
		char *o = malloc(rec_escaped_len(in, n));
		size_t m = rec_escape(o, in, n, NULL);

		fwrite(o, 1, m, stdout);
		putchar('\n');
		free(o);
		free(in);
		return 0;
	}
	if (!strcmp(argv[1], "unescape") || !strcmp(argv[1], "split")) {
		int want = argc > 2 ? atoi(argv[2]) : -1;
		char *line = in, *nl;

		for (; line < in + n; line = nl + 1) {
			struct rec r;
			int rc;

			nl = memchr(line, '\n', (size_t)(in + n - line));
			if (!nl)
				nl = in + n;
			*nl = '\0';
			rc = rec_split(line, (size_t)(nl - line), &r);
			if (rc == 1)
				continue;
			if (rc < 0 || rec_unescape_from(&r, 0) >= 0) {
				puts("error");
				continue;
			}
			if (want >= 0) {
				if (want < r.nf)
					fwrite(r.f[want], 1, r.len[want], stdout);
				continue;
			}
			printf("%d", r.nf);
			for (int i = 0; i < r.nf; i++)
				printf(" [%.*s]", (int)r.len[i], r.f[i]);
			putchar('\n');
		}
		free(in);
		return 0;
	}
	if (!strcmp(argv[1], "props")) {
		char *cur = in, *name, *val;
		size_t nl, vl;
		int rc;

		in[strcspn(in, "\n")] = '\0';
		while ((rc = props_next(&cur, &name, &nl, &val, &vl)) == 1) {
			/* Values may hold NUL (binary correlation data). */
			printf("%s=", name);
			fwrite(val, 1, vl, stdout);
			putchar('\n');
		}
		if (rc < 0)
			puts("error");
		free(in);
		return 0;
	}
	if (!strcmp(argv[1], "reprops")) {
		mosquitto_property *p;
		const char *why;
		struct out o;
		int rc;

		in[strcspn(in, "\n")] = '\0';
		if (props_parse(in, &p, &why) < 0) {
			printf("error: %s\n", why);
			free(in);
			return 0;
		}
		out_init(&o, EV_DEFAULT, 1, 1 << 20);
		if (!props_write(&o, p))
			out_raw(&o, "-", 1);
		out_end(&o);
		mosquitto_property_free_all(&p);
		free(in);
		rc = out_drain_blocking(&o) < 0 ? 111 : 0;
		free(o.buf);
		return rc;
	}
	free(in);
	return 2;
}
