/* SPDX-License-Identifier: MIT */
/* spool.c: mqlb-sub's spool (spool.h): an append-only file of line records,
 * an entry table by uuid, replay bookkeeping, compaction.
 *
 * The file is line records (PROTOCOL.md framing):
 *   m <uuid> <since> <tries> <subid> <qos> <retain> <filter> <mtopic> <payload> [<props>]
 *   r <uuid>             written out once more (a replay)
 *   f <uuid> <why>       finished: ok, nogroup, given-up
 *   i <uuid> <mid> <h>   came as QoS 1 with packet identifier mid, hash h
 *   a                    the PUBACKs of every message above went out
 * An "m" line is appended before its msg record leaves; a crash can lose
 * only what no record was written for. Compaction rewrites the live "m"
 * lines, tries updated, to FILE.tmp and renames it over FILE. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"
#include "log.h"
#include "spool.h"

#define SPOOL_HEADER "# mqlb-sub spool 1\n"
#define ENT_CHUNK    1024
#define MAX_TRIES    65535

static void *xalloc(void *p, size_t n)
{
	if (!(p = realloc(p, n)))
		die(EXIT_SYSERR, "out of memory");
	return p;
}

uint64_t spool_ghash(const char *group, size_t n)
{
	return fnv64(FNV64_BASIS, group, n);
}

static size_t uhash(const char *u)
{
	return (size_t)fnv64(FNV64_BASIS, u, 36);
}

static int is_uuid(const char *s, size_t n)
{
	if (n != 36)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return 0;
		} else if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
			return 0;
		}
	}
	return 1;
}

/* --- the entry table and its lists --------------------------------------- */

static struct spool_ent *find(const struct spool *sp, const char *uuid)
{
	for (struct spool_ent *e = sp->hash[uhash(uuid) & sp->hmask]; e; e = e->hnext)
		if (!memcmp(e->uuid, uuid, 36))
			return e;
	return NULL;
}

static void list_add(struct spool_list *l, struct spool_ent *e)
{
	e->on = l;
	e->next = NULL;
	e->prev = l->tail;
	if (l->tail)
		l->tail->next = e;
	else
		l->head = e;
	l->tail = e;
}

static void list_del(struct spool_ent *e)
{
	struct spool_list *l = e->on;

	if (e->prev)
		e->prev->next = e->next;
	else
		l->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		l->tail = e->prev;
	e->on = NULL;
}

static void grow(struct spool *sp)
{
	size_t nb = (sp->hmask + 1) * 2;
	struct spool_ent **h = calloc(nb, sizeof *h);

	if (!h)
		die(EXIT_SYSERR, "out of memory");
	for (size_t i = 0; i <= sp->hmask; i++)
		for (struct spool_ent *e = sp->hash[i], *next; e; e = next) {
			next = e->hnext;
			e->hnext = h[uhash(e->uuid) & (nb - 1)];
			h[uhash(e->uuid) & (nb - 1)] = e;
		}
	free(sp->hash);
	sp->hash = h;
	sp->hmask = nb - 1;
}

/* Entries come from chunks and go back to a free list: no malloc per
 * message (unless a filter has more than two groups). */
static struct spool_ent *ent_new(struct spool *sp, const char *uuid)
{
	struct spool_ent *e;

	if (!sp->free) {
		struct spool_ent *c = calloc(ENT_CHUNK, sizeof *c);

		if (!c)
			die(EXIT_SYSERR, "out of memory");
		for (int i = 0; i < ENT_CHUNK; i++) {
			c[i].hnext = sp->free;
			sp->free = &c[i];
		}
	}
	e = sp->free;
	sp->free = e->hnext;
	memset(e, 0, sizeof *e);
	memcpy(e->uuid, uuid, 36);
	e->g = e->ginl;
	e->gcap = 2;
	if (sp->n >= sp->hmask + 1)
		grow(sp);
	e->hnext = sp->hash[uhash(uuid) & sp->hmask];
	sp->hash[uhash(uuid) & sp->hmask] = e;
	sp->n++;
	return e;
}

static void ent_free(struct spool *sp, struct spool_ent *e)
{
	for (struct spool_ent **pp = &sp->hash[uhash(e->uuid) & sp->hmask]; *pp; pp = &(*pp)->hnext)
		if (*pp == e) {
			*pp = e->hnext;
			break;
		}
	if (e->on)
		list_del(e);
	if (e->g != e->ginl)
		free(e->g);
	sp->live -= e->len;
	sp->n--;
	e->hnext = sp->free;
	sp->free = e;
}

static void gset_add(struct spool_ent *e, uint64_t gh)
{
	for (int i = 0; i < e->ng; i++)
		if (e->g[i] == gh)
			return;
	if (e->ng == e->gcap) {
		uint64_t *g =
		    xalloc(e->g == e->ginl ? NULL : e->g, (size_t)e->gcap * 2 * sizeof *g);

		if (e->g == e->ginl)
			memcpy(g, e->ginl, sizeof e->ginl);
		e->g = g;
		e->gcap *= 2;
	}
	e->g[e->ng++] = gh;
}

/* --- appending and writing ------------------------------------------------ */

static void line_uuid(struct spool *sp, const char *verb, const struct spool_ent *e,
		      const char *why)
{
	size_t before = sp->ob.len - sp->ob.off;

	out_raw(&sp->ob, verb, 1);
	out_raw(&sp->ob, e->uuid, 36);
	if (why)
		out_str(&sp->ob, why);
	out_end(&sp->ob);
	sp->size += (off_t)(sp->ob.len - sp->ob.off - before);
}

struct out *spool_begin(struct spool *sp, const char *uuid, uint32_t subid, int tries)
{
	sp->lstart = sp->ob.len;
	sp->ltries = tries;
	sp->lsubid = subid;
	memcpy(sp->luuid, uuid, 36);
	out_raw(&sp->ob, "m", 1);
	out_raw(&sp->ob, uuid, 36);
	out_ulong(&sp->ob, (unsigned long)time(NULL));
	out_ulong(&sp->ob, (unsigned long)tries);
	out_ulong(&sp->ob, subid);
	return &sp->ob;
}

struct spool_ent *spool_end(struct spool *sp)
{
	struct spool_ent *e;

	out_end(&sp->ob);
	e = ent_new(sp, sp->luuid);
	e->off = sp->size;
	e->len = (uint32_t)(sp->ob.len - sp->lstart);
	e->tries = (unsigned short)sp->ltries;
	e->subid = sp->lsubid;
	sp->size += e->len;
	sp->live += e->len;
	sp->n_spooled++;
	e->state = e->tries ? SP_OUT : SP_HELD;
	list_add(e->tries ? &sp->out : &sp->held, e);
	return e;
}

/* An "i" line: uuid came with packet identifier mid, hash h. */
static void out_mid(struct out *o, const char *uuid, unsigned mid, uint64_t h)
{
	char hex[17];

	snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
	out_raw(o, "i", 1);
	out_raw(o, uuid, 36);
	out_ulong(o, mid);
	out_raw(o, hex, 16);
	out_end(o);
}

void spool_mid(struct spool *sp, struct spool_ent *e, int mid, uint64_t h)
{
	size_t before = sp->ob.len - sp->ob.off;

	if (mid <= 0 || mid > 65535)
		return;
	e->mid = (uint16_t)mid;
	e->h = h;
	e->mgen = sp->mgen;
	out_mid(&sp->ob, e->uuid, e->mid, h);
	sp->size += (off_t)(sp->ob.len - sp->ob.off - before);
	sp->mids_open++;
}

void spool_acked(struct spool *sp)
{
	if (!sp->mids_open)
		return;
	out_raw(&sp->ob, "a", 1);
	out_end(&sp->ob);
	sp->size += 2;
	sp->mgen++;
	sp->mids_open = 0;
	if (sp->seeds_closing) {
		sp->nseeds = 0;
		sp->seeds_closing = 0;
	}
}

void spool_seeds_done(struct spool *sp)
{
	if (!sp->nseeds || sp->seeds_closing)
		return;
	sp->seeds_closing = 1;
	sp->mids_open++; /* an "a" line after the next release closes them */
}

int spool_write(struct spool *sp)
{
	struct out *o = &sp->ob;

	while (o->off < o->len) {
		ssize_t w = write(sp->fd, o->buf + o->off, o->len - o->off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		o->off += (size_t)w;
		sp->unsynced = 1;
	}
	o->off = o->len = 0;
	return 0;
}

int spool_flush(struct spool *sp)
{
	if (spool_write(sp) < 0) {
		sp->n_errors++;
		errl("cannot write the spool %s: %s", sp->path, strerror(errno));
		return -1;
	}
	if (sp->unsynced && sp->sync && fdatasync(sp->fd) < 0) {
		sp->n_errors++;
		errl("cannot sync the spool %s: %s", sp->path, strerror(errno));
		return -1;
	}
	sp->unsynced = 0;
	return 0;
}

/* An entry's line, from the file (map NULL) or from the whole file mapped
 * (compaction: a read(2) a line is most of its time). */
static int read_line(struct spool *sp, const struct spool_ent *e, const char *map, struct rec *r)
{
	ssize_t n;

	if (e->off + (off_t)e->len > sp->size - (off_t)(sp->ob.len - sp->ob.off) &&
	    spool_flush(sp) < 0)
		return -1;
	if (e->len + 1 > sp->rcap) {
		sp->rcap = e->len + 1024;
		sp->rbuf = xalloc(sp->rbuf, sp->rcap);
	}
	if (map && e->off + (off_t)e->len <= sp->size) {
		memcpy(sp->rbuf, map + e->off, e->len);
		n = (ssize_t)e->len;
	} else {
		n = pread(sp->fd, sp->rbuf, e->len, e->off);
	}
	if (n != (ssize_t)e->len || sp->rbuf[e->len - 1] != '\n') {
		errl("cannot read the spool %s at %lld: %s", sp->path, (long long)e->off,
		     n < 0 ? strerror(errno) : "short or moved line");
		return -1;
	}
	if (rec_split(sp->rbuf, e->len - 1, r) != 0 || r->nf < SPF_PAYLOAD + 1 ||
	    memcmp(r->f[SPF_UUID], e->uuid, 36))
		return -1;
	return 0;
}

int spool_read(struct spool *sp, const struct spool_ent *e, struct rec *r)
{
	return read_line(sp, e, NULL, r);
}

/* --- the life of an entry ------------------------------------------------ */

void spool_out(struct spool *sp, struct spool_ent *e, const uint64_t *g, int ng)
{
	if (e->state != SP_OUT) {
		/* Held or loaded: written out now once more. */
		if (e->tries < MAX_TRIES)
			e->tries++;
		line_uuid(sp, "r", e, NULL);
		if (e->state == SP_LOADED) {
			sp->n_replayed++;
			e->again = 1;
		}
	}
	if (e->on)
		list_del(e);
	e->ng = 0;
	for (int i = 0; i < ng; i++)
		gset_add(e, g[i]);
	e->state = SP_OUT;
	e->t = ev_now(sp->loop);
	list_add(&sp->out, e);
}

void spool_finish(struct spool *sp, struct spool_ent *e, const char *why)
{
	line_uuid(sp, "f", e, why);
	sp->n_finished++;
	ent_free(sp, e);
}

int spool_ok(struct spool *sp, const char *uuid, uint64_t gh)
{
	struct spool_ent *e = find(sp, uuid);
	int again;

	if (!e)
		return 0;
	if (e->state == SP_LOADED) {
		/* Finished by a stage of the earlier run: not for it again. */
		gset_add(e, gh);
		return 0;
	}
	if (e->state != SP_OUT)
		return 0;
	again = e->again;
	for (int i = 0; i < e->ng; i++)
		if (e->g[i] == gh) {
			e->g[i] = e->g[--e->ng];
			break;
		}
	if (!e->ng)
		spool_finish(sp, e, "ok");
	return again;
}

void spool_forget_group(struct spool *sp, uint64_t gh, uint32_t subid)
{
	struct spool_ent *e, *next;

	for (e = sp->out.head; e; e = next) {
		next = e->next;
		if (e->subid != subid)
			continue;
		for (int i = 0; i < e->ng; i++)
			if (e->g[i] == gh) {
				e->g[i] = e->g[--e->ng];
				break;
			}
		if (!e->ng)
			spool_finish(sp, e, "nogroup");
	}
}

static void give_up(struct spool *sp, struct spool_ent *e, const char *mtopic, const char *why)
{
	warnl("spool: gave up on %.36s (topic %s): %s", e->uuid, mtopic, why);
	sp->n_given_up++;
	spool_finish(sp, e, "given-up");
}

void spool_expire(struct spool *sp, ev_tstamp now, double ttl)
{
	/* The out list is in order of writing: the old ones are at its head. */
	while (sp->out.head && now - sp->out.head->t >= ttl) {
		struct spool_ent *e = sp->out.head;
		char why[128];
		struct rec r;

		snprintf(why, sizeof why,
			 "no done within --spool-ttl %gs of writing it out; "
			 "not replayed again",
			 ttl);
		give_up(sp, e, spool_read(sp, e, &r) ? "?" : r.f[SPF_MTOPIC], why);
	}
}

size_t spool_live(const struct spool *sp)
{
	return sp->n;
}

/* --- where a spool lives by default --------------------------------------- */

/* The XDG base directory specification ignores relative paths. */
static const char *absolute(const char *v)
{
	return v && v[0] == '/' ? v : NULL;
}

static char *xasprintf(const char *fmt, const char *a, const char *b)
{
	char *s;

	if (asprintf(&s, fmt, a, b) < 0)
		die(EXIT_SYSERR, "out of memory");
	return s;
}

/* Make dir and its missing parents, mode 0700 (XDG's choice); -1 with
 * errno when a part cannot be made or is not a directory. */
static int mkdirs(char *dir)
{
	struct stat st;

	for (char *p = dir + 1;; p++) {
		char c = *p;
		int rc;

		if (c && c != '/')
			continue;
		*p = '\0';
		rc = mkdir(dir, 0700);
		*p = c;
		if (rc < 0 && errno != EEXIST)
			return -1;
		if (!c)
			break;
	}
	if (stat(dir, &st) < 0)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

char *spool_default_dir(void)
{
	const char *sd = absolute(getenv("STATE_DIRECTORY"));
	const char *xdg = absolute(getenv("XDG_STATE_HOME"));
	const char *home = absolute(getenv("HOME"));
	char *dir;

	if (sd) {
		/* Several StateDirectory= come as a list: the first. */
		if (!(dir = strndup(sd, strcspn(sd, ":"))))
			die(EXIT_SYSERR, "out of memory");
	} else if (xdg) {
		dir = xasprintf("%s/%s", xdg, "mqlb");
	} else if (home) {
		dir = xasprintf("%s/%s", home, ".local/state/mqlb");
	} else {
		die(EXIT_SYSERR, "no place for the spool: set STATE_DIRECTORY, XDG_STATE_HOME or HOME, "
				 "or give --spool FILE or --no-spool");
	}
	if (mkdirs(dir) < 0)
		die(EXIT_SYSERR, "cannot make the spool directory %s: %s", dir, strerror(errno));
	return dir;
}

char *spool_name(const char *dir, const char *id)
{
	static const char hex[] = "0123456789abcdef";
	/* NAME_MAX less ".spool", and room for "~" and a 64-bit hash */
	enum { MAX_NAME = 255 - 6, CUT = MAX_NAME - 17 };
	size_t n = strlen(id), k = 0;
	char *name = malloc(3 * n + 1), *path;

	if (!name)
		die(EXIT_SYSERR, "out of memory");
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)id[i];

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_' || (c == '.' && i > 0)) {
			name[k++] = (char)c;
		} else {
			name[k++] = '%';
			name[k++] = hex[c >> 4];
			name[k++] = hex[c & 15];
		}
	}
	name[k] = '\0';
	if (k > MAX_NAME) {
		/* Cut where no %XX is split, and tell long ids apart by a hash. */
		k = CUT;
		while (k > 0 && (name[k - 1] == '%' || (k > 1 && name[k - 2] == '%')))
			k--;
		snprintf(name + k, 3 * n + 1 - k, "~%016llx",
			 (unsigned long long)spool_ghash(id, n));
	}
	path = xasprintf("%s/%s.spool", dir, name);
	free(name);
	return path;
}

/* --- loading and compaction ---------------------------------------------- */

static void bad_line(struct spool *sp, unsigned long lineno, const char *why)
{
	sp->n_bad_lines++;
	warnl("spool %s line %lu: %s; skipped", sp->path, lineno, why);
}

static const char *check_m(struct rec *r)
{
	unsigned long v;

	if (r->nf != SPF_PAYLOAD + 1 && r->nf != SPF_PROPS + 1)
		return "an m line needs 10 or 11 fields";
	if (!is_uuid(r->f[SPF_UUID], r->len[SPF_UUID]))
		return "bad uuid";
	if (rec_ulong(r, SPF_SINCE, (unsigned long)-1, &v) < 0)
		return "bad time";
	if (rec_ulong(r, SPF_TRIES, MAX_TRIES, &v) < 0)
		return "bad count of tries";
	if (rec_ulong(r, SPF_SUBID, 268435455UL, &v) < 0)
		return "bad subscription identifier";
	if (rec_ulong(r, SPF_QOS, 2, &v) < 0)
		return "bad qos";
	if (rec_ulong(r, SPF_RETAIN, 1, &v) < 0)
		return "bad retain flag";
	if (r->len[SPF_MTOPIC] == 1 && r->f[SPF_MTOPIC][0] == '-')
		return "empty topic";
	return NULL;
}

/* An "i" line as loaded: a seed (the entry it names may be finished). */
static const char *load_mid(struct spool *sp, struct rec *r)
{
	struct spool_seed *sd;
	unsigned long mid;
	char *end;
	unsigned long long h;

	if (r->nf != 4 || rec_ulong(r, 2, 65535, &mid) < 0 || !mid)
		return "bad packet identifier";
	if (r->len[3] != 16)
		return "bad hash";
	h = strtoull(r->f[3], &end, 16);
	if (end != r->f[3] + 16)
		return "bad hash";
	if (sp->nseeds == sp->seedcap) {
		sp->seedcap = sp->seedcap ? 2 * sp->seedcap : 16;
		sp->seeds = xalloc(sp->seeds, sp->seedcap * sizeof *sp->seeds);
	}
	sd = &sp->seeds[sp->nseeds++];
	memcpy(sd->uuid, r->f[1], 36);
	sd->uuid[36] = '\0';
	sd->mid = (uint16_t)mid;
	sd->h = h;
	return NULL;
}

static void load(struct spool *sp)
{
	unsigned long lineno = 0, v;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	off_t off = 0;
	int fd = dup(sp->fd);
	FILE *f = fd < 0 ? NULL : fdopen(fd, "r");

	if (!f)
		die(EXIT_SYSERR, "cannot read the spool %s: %s", sp->path, strerror(errno));
	while ((n = getline(&line, &cap, f)) > 0) {
		off_t here = off;
		struct spool_ent *e;
		const char *why;
		struct rec r;
		int rc;

		off += n;
		lineno++;
		if (line[n - 1] != '\n') {
			bad_line(sp, lineno, "cut short (no end of line)");
			break;
		}
		rc = rec_split(line, (size_t)n - 1, &r);
		if (rc == 1)
			continue;
		if (rc < 0) {
			bad_line(sp, lineno, "too many fields");
			continue;
		}
		if (r.len[0] != 1 || !strchr("mrfia", r.f[0][0])) {
			bad_line(sp, lineno, "unknown line");
			continue;
		}
		/* The "i" lines after the last "a" line are the seeds: what
		 * may lack its PUBACK at the broker (spool_seeds_done). */
		if (r.f[0][0] == 'a') {
			sp->mgen++;
			sp->nseeds = 0;
			continue;
		}
		if (r.nf < 2 || !is_uuid(r.f[1], r.len[1])) {
			bad_line(sp, lineno, "bad uuid");
			continue;
		}
		if (r.f[0][0] == 'i') {
			if ((why = load_mid(sp, &r)))
				bad_line(sp, lineno, why);
			continue;
		}
		e = find(sp, r.f[1]);
		if (r.f[0][0] == 'm') {
			if ((why = check_m(&r))) {
				bad_line(sp, lineno, why);
				continue;
			}
			if (e) {
				bad_line(sp, lineno, "uuid seen before");
				continue;
			}
			e = ent_new(sp, r.f[1]);
			e->off = here;
			e->len = (uint32_t)n;
			rec_ulong(&r, SPF_TRIES, MAX_TRIES, &v);
			e->tries = (unsigned short)v;
			rec_ulong(&r, SPF_SUBID, 268435455UL, &v);
			e->subid = (uint32_t)v;
			e->state = SP_LOADED;
			list_add(&sp->loaded, e);
			sp->live += e->len;
		} else if (!e) {
			/* Its m line was compacted away or bad: nothing to do. */
		} else if (r.f[0][0] == 'r') {
			if (e->tries < MAX_TRIES)
				e->tries++;
		} else {
			ent_free(sp, e);
		}
	}
	if (n < 0 && ferror(f))
		die(EXIT_SYSERR, "cannot read the spool %s: %s", sp->path, strerror(errno));
	free(line);
	fclose(f);
	sp->size = off;
}

/* Rewrite the live entries into path.tmp and put it in place; the offsets
 * follow. Every live entry's line is re-read from the old file. */
static void compact(struct spool *sp)
{
	char tmp[4096];
	struct spool_list *lists[] = {&sp->loaded, &sp->held, &sp->out};
	struct out w;
	off_t size;
	int fd;
	char *map;

	if (spool_flush(sp) < 0)
		die(EXIT_SYSERR, "the spool %s cannot be written", sp->path);
	snprintf(tmp, sizeof tmp, "%s.tmp", sp->path);
	fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
		sp->n_errors++;
		errl("cannot compact the spool: %s: %s", tmp, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	map = sp->size > 0 ? mmap(NULL, (size_t)sp->size, PROT_READ, MAP_SHARED | MAP_POPULATE,
				   sp->fd, 0) : MAP_FAILED;
	if (map == MAP_FAILED)
		map = NULL; /* read line by line instead */
	out_init(&w, sp->loop, -1, 1 << 20);
	ev_ref(sp->loop);
	ev_prepare_stop(sp->loop, &w.flusher);
	out_raw(&w, SPOOL_HEADER, sizeof SPOOL_HEADER - 2);
	out_end(&w);
	size = (off_t)w.len;
	for (size_t l = 0; l < sizeof lists / sizeof lists[0]; l++)
		for (struct spool_ent *e = lists[l]->head; e; e = e->next) {
			struct rec r;
			size_t before = w.len;

			if (read_line(sp, e, map, &r) < 0) {
				/* Keep it in place; the next compaction tries again. */
				goto fail;
			}
			for (int i = 0; i < r.nf; i++)
				if (i == SPF_TRIES)
					out_ulong(&w, e->tries);
				else
					out_raw(&w, r.f[i], r.len[i]);
			out_end(&w);
			e->off = size;
			sp->live += (off_t)(w.len - before) - e->len;
			e->len = (uint32_t)(w.len - before);
			size += e->len;
			/* a kill before the next "a" line may still meet its resend */
			if (spool_mid_open(sp, e)) {
				before = w.len;
				out_mid(&w, e->uuid, e->mid, e->h);
				size += (off_t)(w.len - before);
			}
			if (w.len >= 1 << 20 && write(fd, w.buf, w.len) != (ssize_t)w.len)
				goto fail;
			if (w.len >= 1 << 20)
				w.len = 0;
		}
	/* the seeds' "i" lines stay until their resends are over */
	for (size_t i = 0; i < sp->nseeds; i++) {
		size_t before = w.len;

		out_mid(&w, sp->seeds[i].uuid, sp->seeds[i].mid, sp->seeds[i].h);
		size += (off_t)(w.len - before);
	}
	if ((w.len && write(fd, w.buf, w.len) != (ssize_t)w.len) || (sp->sync && fsync(fd) < 0) ||
	    rename(tmp, sp->path) < 0)
		goto fail;
	free(w.buf);
	if (map)
		munmap(map, (size_t)sp->size);
	close(sp->fd);
	sp->fd = fd;
	sp->size = size;
	sp->n_compactions++;
	return;
fail:
	/* Offsets may point into the new file now: reload them is not
	 * possible, so this is fatal rather than a spool that lies. */
	die(EXIT_SYSERR, "cannot compact the spool %s: %s", sp->path, strerror(errno));
}

void spool_maybe_compact(struct spool *sp)
{
	if (sp->size > (off_t)(64 << 10) && sp->size - sp->live > 3 * sp->live)
		compact(sp);
}

int spool_open(struct spool *sp, struct ev_loop *loop, const char *path, int sync, int max_replays)
{
	struct spool_ent *e, *next;
	int fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

	if (fd < 0)
		die(EXIT_SYSERR, "cannot open the spool %s: %s", path, strerror(errno));
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno != EWOULDBLOCK)
			die(EXIT_SYSERR, "cannot lock the spool %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	memset(sp, 0, sizeof *sp);
	sp->fd = fd;
	sp->path = path;
	sp->loop = loop;
	sp->sync = sync;
	sp->max_replays = max_replays;
	sp->hmask = 1023;
	sp->hash = calloc(sp->hmask + 1, sizeof *sp->hash);
	if (!sp->hash)
		die(EXIT_SYSERR, "out of memory");
	/* A buffer only: flushed by spool_flush(), never by the loop. */
	out_init(&sp->ob, loop, -1, (size_t)-1);
	ev_ref(loop);
	ev_prepare_stop(loop, &sp->ob.flusher);
	load(sp);
	for (e = sp->loaded.head; e; e = next) {
		char why[128];
		struct rec r;

		next = e->next;
		if (e->tries <= max_replays)
			continue;
		snprintf(why, sizeof why,
			 "written out %d times without a done (--spool-replays %d)", e->tries,
			 max_replays);
		give_up(sp, e, spool_read(sp, e, &r) ? "?" : r.f[SPF_MTOPIC], why);
	}
	if (sp->n)
		infol("spool %s: %zu entries to write out again", path, sp->n);
	else
		infol("spool %s", path);
	compact(sp);
	return 0;
}
