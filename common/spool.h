/* SPDX-License-Identifier: MIT */
/* spool.h: mqlb-sub's spool, an append-only file of the msg records it wrote
 * whose jobs have not reported done, so that a restarted balancer writes them
 * again after any stage was killed (at-least-once across kill -9). */
#ifndef MQLB_SPOOL_H
#define MQLB_SPOOL_H

#include <ev.h>
#include <stdint.h>
#include <sys/types.h>

#include "io.h"
#include "record.h"

/* The fields of a spool line "m", as split by spool_read(). */
enum {
	SPF_UUID = 1,
	SPF_SINCE,
	SPF_TRIES,
	SPF_SUBID,
	SPF_QOS,
	SPF_RETAIN,
	SPF_FILTER,
	SPF_MTOPIC,
	SPF_PAYLOAD,
	SPF_PROPS
};

enum spool_state {
	SP_HELD,   /* arrived for no known filter; not written out yet */
	SP_LOADED, /* from the file of an earlier run; waits for its filter */
	SP_OUT,    /* written out; waits for a done from each of its groups */
};

/* An open "i" line of an earlier run: a message whose PUBACK may not have
 * reached the broker, which then sends it again (same packet identifier,
 * same hash). Kept whatever became of its entry (finished, given up). */
struct spool_seed {
	char uuid[37];
	uint16_t mid;
	uint64_t h;
};

struct spool_list {
	struct spool_ent *head, *tail;
};

struct spool_ent {
	char uuid[37];
	unsigned char state;
	unsigned short tries; /* times written out, over every run */
	unsigned char again;  /* written out again in this run, from an earlier run's file */
	uint16_t ng, gcap;
	uint32_t subid; /* its filter's subscription identifier; 0: none */
	/* The QoS 1 packet identifier it came with and mq_msg_hash() of it
	 * (its "i" line): open while the broker may not have its PUBACK (no
	 * "a" line since, see spool_mid_open); mid 0: none. */
	uint16_t mid;
	uint32_t mgen; /* the count of "a" lines when its "i" line was written */
	uint64_t h;
	uint32_t len;   /* of its "m" line */
	off_t off;      /* of its "m" line in the file */
	ev_tstamp t;    /* written out (SP_OUT), for --spool-ttl */
	/* SP_OUT: the groups (spool_ghash) whose done is awaited; SP_LOADED:
	 * the groups that already reported ok. */
	uint64_t *g, ginl[2];
	struct spool_ent *hnext, *prev, *next;
	struct spool_list *on;
};

struct spool {
	const char *path;
	struct ev_loop *loop;
	int fd, sync, max_replays;
	int unsynced; /* written since the last fdatasync */
	struct out ob; /* lines appended, not yet written */
	off_t size;    /* of the file, ob included */
	off_t live;    /* bytes of the "m" lines of live entries */
	struct spool_ent **hash;
	size_t hmask, n;
	struct spool_list held, loaded, out;
	struct spool_ent *free;
	char *rbuf;
	size_t rcap;
	size_t lstart; /* the line being appended */
	int ltries;
	uint32_t lsubid;
	char luuid[37];
	uint32_t mgen;      /* "a" lines so far */
	unsigned mids_open; /* "i" lines since the last "a" */
	/* The open "i" lines of the file as loaded; from spool_seeds_done()
	 * on, closed by the next "a" line. */
	struct spool_seed *seeds;
	size_t nseeds, seedcap;
	int seeds_closing;
	unsigned long n_spooled, n_finished, n_replayed, n_given_up, n_bad_lines, n_errors,
	    n_compactions;
};

/* Open (create) the spool at path, lock it, load what an earlier run left,
 * give up on entries written out more than max_replays + 1 times, and
 * compact. -1 (and nothing done) when another process holds its lock;
 * fatal (exit 111) when it cannot be opened or locked. */
int spool_open(struct spool *sp, struct ev_loop *loop, const char *path, int sync,
	       int max_replays);

/* The directory of a spool not named on the command line: the first of
 * $STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/mqlb, else
 * $HOME/.local/state/mqlb, made with its missing parents (mode 0700).
 * Fatal (exit 111, one error line) when there is none or it cannot be made. */
char *spool_default_dir(void);
/* dir/ID.spool, the bytes of id outside [A-Za-z0-9._-] (and a leading
 * '.') as %XX; a name too long for a file is cut and ends in a hash. */
char *spool_name(const char *dir, const char *id);

/* A new entry: spool_begin() writes the line's head and returns the buffer
 * for the msg fields from qos on (out_* calls); spool_end() ends the line.
 * tries is 1 for a record written out now, 0 for a held message. */
struct out *spool_begin(struct spool *sp, const char *uuid, uint32_t subid, int tries);
struct spool_ent *spool_end(struct spool *sp);

/* The entry came as a QoS 1 message with packet identifier mid: an "i"
 * line, so that a run after a kill knows the broker's resend of it (the
 * PUBACK leaves after the spool write: a kill between the two leaves the
 * message both here and at the broker). */
void spool_mid(struct spool *sp, struct spool_ent *e, int mid, uint64_t h);
/* The PUBACKs of every message spooled so far go to the broker now: an "a"
 * line (written with the next lines, if any) closes the "i" lines before. */
void spool_acked(struct spool *sp);
/* The broker's resends on the first connection are over (or it had none
 * to send): the seeds (sp->seeds) are closed by the next "a" line, which
 * follows the release of the PUBACKs of the resends dropped. Until then
 * compaction keeps their "i" lines. */
void spool_seeds_done(struct spool *sp);
/* Whether e may still lack its PUBACK at the broker: its "i" line came after
 * the last "a" line (e.mid is its packet identifier). */
static inline int spool_mid_open(const struct spool *sp, const struct spool_ent *e)
{
	return e->mid && e->mgen == sp->mgen;
}

/* The entry's msg record was written out, now for these groups: from a held
 * or loaded entry, that is a replay. */
void spool_out(struct spool *sp, struct spool_ent *e, const uint64_t *g, int ng);
/* Its job is over (ok, nogroup, given-up...): forget it. */
void spool_finish(struct spool *sp, struct spool_ent *e, const char *why);
/* Group gh reported "ok" for uuid. 1 if its entry was written out again
 * from an earlier run's file (spool_ent.again), else 0. */
int spool_ok(struct spool *sp, const char *uuid, uint64_t gh);
/* Group gh left the filter of subscription identifier subid (ungroup): no
 * entry of that filter waits for its done any more. */
void spool_forget_group(struct spool *sp, uint64_t gh, uint32_t subid);
/* Give up on entries written out before now - ttl and still without done;
 * one warning each. */
void spool_expire(struct spool *sp, ev_tstamp now, double ttl);
/* The entry's "m" line, split (fields SPF_*); -1 if it cannot be read. */
int spool_read(struct spool *sp, const struct spool_ent *e, struct rec *r);
/* Write what was appended to the file, where a killed process cannot lose
 * it; -1 with errno, not reported: spool_flush() tries again and says so. */
int spool_write(struct spool *sp);
/* spool_write(), then with sync fdatasync(2) what was written since the
 * last flush: before the records it covers leave. -1 when it cannot be
 * (reported on stderr). */
int spool_flush(struct spool *sp);
/* Rewrite the live entries when dead lines dominate the file. */
void spool_maybe_compact(struct spool *sp);
size_t spool_live(const struct spool *sp);

/* A group's name as a set member. */
uint64_t spool_ghash(const char *group, size_t n);

#endif
