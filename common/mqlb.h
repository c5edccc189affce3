/* SPDX-License-Identifier: MIT */
/* mqlb.h: libmqlb, the worker side of the mqlb protocol (announce, bid,
 * take awards, report done) inside the caller's libev loop. See libmqlb(3). */
#ifndef MQLB_H
#define MQLB_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;
struct mqlb_worker;

/* What a worker does when no balancer confirms its announce. */
enum mqlb_fallback {
	MQLB_FALLBACK_SHARE = 0, /* subscribe $share/{group}/{topic} (default) */
	MQLB_FALLBACK_DIRECT,    /* subscribe {topic} */
	MQLB_FALLBACK_NONE,      /* wait for a balancer */
};

/* Zero the struct, then set what you need: 0 and NULL mean the default.
 * Strings are copied by mqlb_worker_new(). */
struct mqlb_worker_opts {
	/* the broker */
	const char *host;      /* "localhost" */
	int port;              /* 1883 */
	const char *username, *password;
	const char *client_id; /* NULL: a random one */
	int mqtt_version;      /* 5 (default) or 311 */
	int keepalive;         /* seconds, MQTT keepalive and announce interval; 10 */
	int qos;               /* award and fallback subscriptions, done, replies; 1 */
	const char *cafile, *capath, *certfile, *keyfile;
	int tls_insecure;
	int retries;           /* failed connects in a row before exit(69); 0: forever */
	/* the protocol */
	const char *prefix;    /* "lb" */
	const char *group;     /* required: one topic level */
	const char *topic;     /* required: the topic filter to take work from */
	const char *wid;       /* NULL: hostname-pid */
	int slots;             /* jobs at once; 1 */
	double reserve_timeout; /* seconds a bid holds its slot; 1 */
	double suback_timeout; /* seconds without suback before falling back; 2 x keepalive */
	int fallback;          /* enum mqlb_fallback */
	int queue;             /* jobs waiting for a slot (over-awards, fallback); 100 */
	int no_reply;          /* never publish replies to a Response Topic */
	int bid;               /* the bid protocol (requests, bids) instead of credit */
	/* credit: jobs taken beyond slots, to start as slots come free; the
	 * balancer awards them shortly before it expects a slot free
	 * (mqlb-protocol(7), "slots+ahead"); 0; not with bid */
	int ahead;
	/* credit: the most jobs taken in one award message ("batch=n" in the
	 * credit), whose dones then share messages too; 0: one job a message;
	 * not with bid */
	int batch;
};

struct mqlb_worker_cb {
	/* A job starts and holds one slot until mqlb_worker_done(w, id, ...),
	 * which may be called from inside this callback. id is the balancer's
	 * uuid (MQTT 5 award) or a worker-local id ("local-N"); props is the
	 * record field of MQTT 5 properties ("rt=...,cd=...", mqlb.7) or NULL.
	 * All pointers stay valid until the job is done. */
	void (*job)(struct mqlb_worker *w, const char *id, int qos, const char *mtopic,
		    const void *payload, size_t len, const char *props, void *arg);
	/* Optional: subscribed for the first time. */
	void (*ready)(struct mqlb_worker *w, void *arg);
	/* Optional: after mqlb_worker_drain(), nothing is left (left = 0) or the
	 * drain timeout passed with left jobs still running. */
	void (*drained)(struct mqlb_worker *w, int left, void *arg);
};

struct mqlb_worker_stats {
	unsigned long slots, running, reserved, queued;
	unsigned long requests, bids, late_bids, awards, over_awards, busy;
	unsigned long fallback, fallback_deliveries, dropped;
	unsigned long done_ok, done_fail, subacks, connected;
	unsigned long ahead; /* awards taken while every slot ran */
	unsigned long batches; /* award messages carrying several jobs */
	unsigned long replayed; /* ok dones published again after a reconnect */
};

/* NULL with errno EINVAL when group, topic or wid is not acceptable. */
struct mqlb_worker *mqlb_worker_new(struct ev_loop *loop, const struct mqlb_worker_opts *opts,
				    const struct mqlb_worker_cb *cb, void *arg);
/* Connect (and reconnect for ever) from inside the loop. */
void mqlb_worker_start(struct mqlb_worker *w);
/* End a job: ok, or failed for reason (one word). With reply non-NULL and
 * a Response Topic on the job, reply[0..replylen) is published to it with
 * the job's Correlation Data. Returns 0, or -1 when no job has that id. */
int mqlb_worker_done(struct mqlb_worker *w, const char *id, int ok, const char *reason,
		     const void *reply, size_t replylen);
/* Change the number of slots (at least 1). */
void mqlb_worker_set_slots(struct mqlb_worker *w, int slots);
/* Stop bidding and taking fallback work; finish what runs; call drained. */
void mqlb_worker_drain(struct mqlb_worker *w, double timeout);
/* Disconnect cleanly and free; the loop has nothing of ours left. */
void mqlb_worker_free(struct mqlb_worker *w);
const char *mqlb_worker_wid(const struct mqlb_worker *w);
void mqlb_worker_stats(const struct mqlb_worker *w, struct mqlb_worker_stats *st);

#ifdef __cplusplus
}
#endif

#endif
