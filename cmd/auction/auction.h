/* SPDX-License-Identifier: MIT */
/* auction.h: the parts of mqlb-auction: job queues and the uuid table
 * (jobs.c), the token ring (tokens.c), per-worker figures (workers.c),
 * placement (place.c), requests and retries (ask.c), records in and out
 * (records.c), the broker's messages (broker.c), flow control and shutdown
 * (flow.c), and the stats (stats.c). */
#ifndef MQLB_AUCTION_H
#define MQLB_AUCTION_H

#include <ev.h>
#include <stddef.h>

#include "hist.h"
#include "io.h"
#include "mqtt.h"
#include "opt.h"
#include "sock.h"
#include "stage.h"

#define MAX_LEVEL 256 /* group and wid: one topic level */
#define MAX_RETRY 16
#define WSTAT_BUCKETS 1024
#define WSTAT_MAX 65536 /* workers tracked for the stats, at most */
#define MAX_PREV 4 /* earlier holders of a job whose late done still counts */

enum jstate { J_WAIT, J_AWARDED, J_FINISHED };
enum scheme { SCHEME_SOONEST, SCHEME_LEAST, SCHEME_FIRST };
#define EWMA 0.25 /* weight of the newest award-to-done time */
#define PLACE_SCAN 1024 /* waiting jobs looked at per placement, at most */
#define PARKED 1e300    /* a job's park_until while we wait to hear its worker again */
/* A job an earlier run of mqlb-sub wrote out (a replay record) waits this
 * long after we are up for a worker's credit to name it: every worker
 * answers our hello at once. */
#define HELLO_WAIT 1.0

struct job;
struct group;

/* A queue of jobs, oldest first: a group's waiting jobs, or its awarded
 * jobs in award order (so ack timeouts are found from the head). */
struct jq {
	struct job *head, *tail;
};

/* One worker of a group: what it got and how it went (the stats), its
 * credit if it announced one, and its service time for --scheme soonest. */
struct wstat {
	struct group *g;
	char wid[MAX_LEVEL + 1];
	unsigned long awarded, ok, fail;
	unsigned long inflight; /* jobs awarded here and tracked, no done yet */
	unsigned slots;         /* credit: announced slots; 0: a bidding worker */
	unsigned ahead;         /* credit "slots+ahead": jobs it keeps waiting */
	unsigned batch;         /* credit "batch=n": jobs it takes in one award message */
	/* its award records of this loop iteration, written out together
	 * behind one batch record before the loop sleeps (records.c) */
	struct out *pend;
	unsigned npend;
	int listed; /* on S.pending */
	struct wstat *pnext;
	int blocked;            /* credit: said "fail busy"; none until its next done */
	/* bidding: 1 once it sent a done or bid free=n (it acks), -1 once an
	 * award passed --ack-timeout before either (it does not: MQTT 3.1.1,
	 * no mqlb-id), 0 until then */
	int acks;
	ev_tstamp credit_t;     /* mq_heard() at its last credit message */
	ev_tstamp credit_at;    /* ev_now() then, for lost awards */
	ev_tstamp last_award;
	unsigned long award_no; /* its group's award count at its last award */
	int probe;              /* awarded while its time was stale: the next ok sets it anew */
	double last_done;       /* hist_now() at its last ok or fail (not busy); 0: none */
	double svc;             /* award to done, moving average; < 0: none yet */
	struct hist lat;        /* award to done */
	struct job *jobs;       /* its tracked jobs */
	/* Jobs its last credit named that we have no msg for (yet): an
	 * earlier run of ours awarded them; a replayed msg of one stays here. */
	char (*claims)[36];
	unsigned nclaims, claimcap;
	struct wstat *next, *lnext, *gnext; /* hash chain; all, in first-seen order; the group's */
};

struct job {
	struct msg *m;
	struct group *g;
	struct wstat *ws; /* of the worker it is awarded to */
	struct job *wprev, *wnext; /* on ws->jobs while tracked */
	int tracked;      /* counted in ws->inflight, waits for its done */
	int listed;       /* named by the credit message being read */
	int ahead;        /* awarded ahead, while all the worker's slots ran */
	ev_tstamp begun;  /* ahead: when a slot came free for it; 0: waits */
	/* Taken back on its worker's will: not placed before this (PARKED:
	 * until we are back with the broker, see broker.c) */
	ev_tstamp park_until;
	enum jstate st;
	int attempts;
	ev_tstamp t; /* when awarded */
	ev_tstamp heard_t; /* mq_heard() then, for --ack-timeout */
	char wid[MAX_LEVEL + 1];
	/* Workers it was taken back from (will, ack timeout): a job may still
	 * finish there, and that worker's done is news, not a forgery. */
	char *prev_wid[MAX_PREV];
	int nprev;
	struct job *prev, *next;
	struct jq *on;
};

struct token {
	char wid[MAX_LEVEL + 1];
	ev_tstamp expires;
	int fresh; /* a bid being placed now: kept (a token) only if it stays */
};

struct group {
	char *name;
	char **filters;
	int nfilters;
	struct jq waiting, awarded;
	struct hist wait, e2e; /* read to first award; read to done ok */
	struct token *tokens; /* ring */
	unsigned thead, tlen, tcap;
	ev_timer ask; /* the group's round of requests, while jobs wait */
	int ask_idx;  /* requests in this round so far */
	ev_timer replace; /* --scheme soonest: look again when holding stops paying */
	double rate;      /* jobs a second coming to the group, decaying average */
	unsigned long awards; /* jobs awarded in the group */
	ev_tstamp rate_t; /* when rate was last brought up to date */
	struct wstat *workers;
	struct group *next;
};

/* One original message. Its mtopic, payload and props are kept escaped, as
 * they came, so an assign record copies them out without re-encoding. */
struct msg {
	char uuid[37];
	int qos;
	char *buf;
	size_t cap;
	size_t mt_len, pl_off, pl_len, pr_off, pr_len; /* raw fields in buf */
	char *mtopic;    /* unescaped, for the request topic */
	size_t mtopic_cap;
	struct job *jobs;
	int njobs, jcap, open; /* open: jobs not finished */
	ev_tstamp born; /* mq_heard() at the start of its wait for bids, for --deadline */
	ev_tstamp arrived; /* mq_heard() when its msg record was read */
	ev_tstamp expires; /* MQTT 5 message expiry, counted from reading; 0: none */
	ev_timer wait;  /* its deadline or expiry, while a job of it waits */
	int replayed;   /* after a replay record: a worker may run it already */
	struct msg *hnext; /* hash chain, or free list */
};

struct cand;

/* The state of the stage: settings, tables and counters. */
struct auction {
	struct conf cf;
	struct stage st;
	ev_timer acks, purge;
	struct group *groups;
	struct msg **hash;
	size_t hmask;
	struct wstat *wtab[WSTAT_BUCKETS], *wlist, **wtail;
	unsigned long nwstat, ngroups;
	struct msg *free;
	long npending, max_pending;
	double token_ttl, deadline, ack_timeout, credit_ttl;
	double ahead; /* --ahead: award this long before a slot is expected free */
	enum scheme scheme;
	struct wstat *pending; /* workers with award records held in pend */
	ev_prepare pend_flush;
	ev_timer batch_t;
	ev_timer unpark; /* after a reconnect: parked jobs may go to anyone now */
	double batch_wait; /* --batch-wait */
	struct cand *cands;
	size_t ncands, ccap;
	double retry[MAX_RETRY];
	int nretry, max_attempts, ready, subs_left;
	int lost_once; /* the broker connection went once: parked jobs wait RESYNC_WAIT */
	char replay_uuid[36]; /* the replay record just read, for the msg after it */
	int replay_next;
	size_t plen;
	char *topicbuf;
	size_t topiccap;
	unsigned long n_msg, n_asked, n_retries, n_awarded, n_tokens_used, n_tokens_kept,
		n_tokens_expired, n_bids, n_bids_ignored, n_foreign, n_done_nogroup, n_drop_nobid,
		n_drop_nogroup,
		n_drop_failed, n_drop_shutdown, n_drop_expired, n_done_ok, n_done_fail, n_done_late,
		n_reawards, n_forged, n_bad_records, n_gone, n_untracked, n_credit, n_credit_bad,
		n_busy, n_held, n_probes, n_kept, n_progress, n_lost, n_ahead, n_batches, n_batched,
		n_replayed;
};
extern struct auction S;

/* jobs.c: memory, job queues, the uuid table, the recent set, a job's life */
void *xmalloc(size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
void jq_remove(struct job *j);
void jq_push(struct jq *q, struct job *j, int front);
size_t uuid_hash(const char *u);
int recent_has(const char *uuid);
struct msg *msg_find(const char *uuid);
struct msg *msg_new(void);
void msg_free(struct msg *m);
int msg_waiting(const struct msg *m);
void job_forget_prev(struct job *j);
void job_untrack(struct job *j);
void job_track(struct job *j);
void job_finish(struct job *j);
int expired(const struct msg *m);
void drop_waiting(struct msg *m, const char *reason);
void drop_expired(struct msg *m);

/* tokens.c */
void tokens_purge(struct group *g, ev_tstamp now);
void purge_cb(struct ev_loop *loop, ev_timer *w, int revents);
void token_put(struct group *g, const char *wid, int fresh);
void token_add(struct group *g, const char *wid);
void tokens_drop_wid(struct group *g, const char *wid);
int token_take_wid(struct group *g, const char *wid);
void tokens_keep_fresh(struct group *g);

/* workers.c */
struct wstat *wstat_find(const struct group *g, const char *wid);
struct wstat *wstat_of(struct group *g, const char *wid);
int credit_live(const struct wstat *w);
/* The jobs w holds: ours awarded and tracked, and those its credit named
 * before their msg came (claims: an earlier run of ours awarded them). */
static inline unsigned long wstat_busy(const struct wstat *w) { return w->inflight + w->nclaims; }
void claim_add(struct wstat *w, const char *uuid);
void claim_drop(struct wstat *w, const char *uuid);
struct wstat *claimant(const struct group *g, const char *uuid);
int group_live(const struct group *g);

/* place.c */
void award(struct job *j, const char *wid);
/* A slot of w came free (a done): the job it kept waiting longest runs. */
void ahead_begins(struct wstat *w);
void reaward(struct job *j);
void job_attach(struct job *j, struct wstat *w);
void replay_park(struct msg *m);
void place(struct group *g);
void group_arrival(struct group *g);
void replace_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* ask.c */
void ask_cb(struct ev_loop *loop, ev_timer *w, int revents);
void group_kick(struct group *g, int now);
void msg_arm(struct msg *m);
void wait_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* records.c */
void emit_drop(const struct msg *m, const struct group *g, const char *reason);
void emit_assign(const struct job *j);
void emit_done(const struct job *j, const char *result, size_t n);
void pend_flush_cb(struct ev_loop *loop, ev_prepare *w, int revents);
void batch_cb(struct ev_loop *loop, ev_timer *w, int revents);
/* Write out the awards held for w now. */
void pend_write_now(struct wstat *w);
struct group *group_find(const char *name, size_t n);
struct group *group_new(const char *name);
int group_has(const struct group *g, const char *filter);
void on_line(struct in *in, char *line, size_t n, void *arg);

/* broker.c */
extern const struct mq_cb auction_cb;
/* P/done/group/wid/uuid: "ok" or "fail reason", maybe " free=n" */
void on_done(struct group *g, const char *wid, const char *uuid, char *payload, size_t n);
void ack_cb(struct ev_loop *loop, ev_timer *w, int revents);
void unpark_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* flow.c */
void maybe_resume(void);
void on_eof(struct in *in, int err, void *arg);
void on_drain(struct out *o, void *arg);
int on_out_closed(void);
void drain_cb(struct ev_loop *loop, ev_timer *w, int revents);
void signal_cb(struct ev_loop *loop, ev_signal *w, int revents);

/* stats.c */
void stats_line(struct conn *c, char *line, size_t n, void *arg);

#endif
