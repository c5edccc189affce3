/* SPDX-License-Identifier: MIT */
/* mqtt.h: one libmosquitto client driven by a libev loop (no threads), with
 * connect back-off, reconnect, and callbacks to (re)subscribe. */
#ifndef MQLB_MQTT_H
#define MQLB_MQTT_H

#include <ev.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <stddef.h>
#include <stdint.h>

struct mq_opts {
	const char *host;
	int port;
	const char *user, *pass;
	const char *id;  /* client id; NULL: the broker or a random one */
	int qos;         /* -q: the QoS a command uses (its own default) */
	int version;     /* MQTT_PROTOCOL_V5 or MQTT_PROTOCOL_V311 */
	int keepalive;   /* seconds */
	int clean;       /* 0: persistent session (needs id) */
	int retries;     /* failed attempts in a row before exit 69; 0: forever */
	const char *cafile, *capath, *cert, *key;
	int insecure;
	/* last will, set at CONNECT */
	const char *will_topic;
	int will_qos;
};

struct mq;
struct mq_cb {
	/* CONNACK accepted: subscribe here (again after a reconnect). */
	void (*connected)(struct mq *mq, int first, void *arg);
	void (*disconnected)(struct mq *mq, void *arg);
	void (*message)(struct mq *mq, const struct mosquitto_message *msg,
			const mosquitto_property *props, void *arg);
	void (*subscribed)(struct mq *mq, int mid, int n, const int *granted, void *arg);
	/* PUBACK/PUBCOMP, or written to the socket for QoS 0. */
	void (*published)(struct mq *mq, int mid, int reason, void *arg);
	/* Optional: a message read while reading is paused, kept for later
	 * (libmosquitto has acknowledged it already). What it returns comes
	 * back from mq_held_tag() while that message is delivered. */
	void *(*held)(struct mq *mq, const struct mosquitto_message *msg,
		      const mosquitto_property *props, void *arg);
	/* Optional: what the broker sends again after a connection, of what
	 * we took before (dropped, see on_message), is over: a message that
	 * is not one came, or the session is new, or there was nothing to know. */
	void (*resends_over)(struct mq *mq, void *arg);
};

/* A message read while paused, waiting for mq_pause_read(mq, 0). */
struct mq_held {
	struct mosquitto_message msg;
	mosquitto_property *props;
	void *tag;
	struct mq_held *next;
};

/* How much a pause may hold before the socket itself stops being read. */
#define MQ_BACKLOG_MSGS 100000
#define MQ_BACKLOG_BYTES (64UL << 20)
#define MQ_SEEN 1024 /* QoS 1 messages of a connection kept to know a resend */

/* A QoS 1 message taken: its packet identifier and a hash of the rest. */
struct mq_seen {
	uint64_t h;
	int mid;
};

struct mq {
	struct mosquitto *m;
	struct ev_loop *loop;
	ev_io io;
	ev_timer misc, retry;
	ev_prepare prep;
	ev_timer kick; /* reads what sockbuf.c holds read, when the socket wakes nobody */
	const struct mq_opts *o;
	const struct mq_cb *cb;
	void *arg;
	const char *name; /* for diagnostics: "broker", "output"... */
	int connected, ever_connected, fails, stopping, read_paused;
	unsigned long ncb; /* libmosquitto callbacks so far: a read that made none read no packet */
	int in_lib; /* inside mosquitto_loop_*: its callback lock is held */
	/* mq_hold_acks(): writes held while we read, and whether they are. */
	int hold_acks, held;
	/* This loop turn read from the broker; publishes, and bytes sockbuf.c
	 * sent, so far and at the last turn's end: see quickack(). */
	int got;
	unsigned long npub, npub_turn, sent_turn;
	/* Paused, the socket is still read, so that libmosquitto's keepalive
	 * goes on; what arrives waits here, in order, up to MQ_BACKLOG_*. */
	struct mq_held *backlog, **backlog_tail, *delivering;
	unsigned long backlog_n, backlog_max_seen;
	size_t backlog_bytes;
	ev_timer resume; /* delivers the backlog from the loop, not from a callback */
	/* The last MQ_SEEN QoS 1 messages of this connection and of the one
	 * before (rings: the next slot is n % MQ_SEEN), and whether the
	 * broker may still be sending again what we took: see on_message. */
	struct mq_seen *seen, *prev;
	unsigned long seen_n, prev_n, resends;
	uint64_t msg_h; /* mq_msg_hash() */
	int resend_check;
	int deaf; /* reading paused, or the connection down: see mq_heard() */
	ev_tstamp deaf_at, deaf_total;
	double backoff;
};

void mq_init(struct mq *mq, struct ev_loop *loop, const struct mq_opts *o,
	     const struct mq_cb *cb, void *arg);
void mq_start(struct mq *mq);
/* Stop delivering messages (the consumer is full) or resume. Paused, the
 * connection lives on: messages are read and kept (struct mq_held) until
 * the backlog is full, and only then does the socket wait unread. */
void mq_pause_read(struct mq *mq, int paused);
/* The tag the held callback gave the message being delivered now; NULL
 * for a message delivered as it was read. */
void *mq_held_tag(const struct mq *mq);
/* At shutdown: deliver what the backlog holds, paused or not. Not from
 * inside an mq callback. */
void mq_deliver_backlog(struct mq *mq);
/* ev_now() less the time reading was paused, or the connection down: while
 * we do not read, what peers say (announces, bids, dones) waits unread at
 * the broker, and while we are away it cannot reach us; either way their
 * silence must not count towards a timeout. */
ev_tstamp mq_heard(const struct mq *mq);
int mq_publish(struct mq *mq, int *mid, const char *topic, size_t n, const void *payload,
	       int qos, int retain, const mosquitto_property *props);
/* Subscribe one filter; subid > 0 sets an MQTT 5 subscription identifier. */
int mq_subscribe(struct mq *mq, int *mid, const char *filter, int qos, int subid);
int mq_unsubscribe(struct mq *mq, const char *filter);
/* In the message or held callback of a QoS 1 message of a persistent
 * session, just read: the hash that, with its packet identifier, tells a
 * resend of it apart (of its topic and payload). 0 otherwise, and for one
 * delivered from a pause's backlog. */
uint64_t mq_msg_hash(const struct mq *mq);
/* A QoS 1 message an earlier run took (packet identifier mid, hash h as
 * mq_msg_hash() gave it) whose PUBACK may not have reached the broker:
 * before mq_start(), so that the first connection to the session knows the
 * broker's resend of it, as one of the connection before (see on_message). */
void mq_seen_add(struct mq *mq, int mid, uint64_t h);
/* Acks after the consumer has kept the message. libmosquitto sends a QoS 1
 * PUBACK (QoS 2 PUBREC) while it reads, before the message callback: from
 * now on what it writes while the socket is read waits in our buffer
 * (sockbuf.h), never in the kernel, and the socket closes with a reset
 * (SO_LINGER 0). mq_release_acks() sends it: call it once what was read is
 * safe, before the loop blocks (a prepare watcher). Dies in a program where
 * libmosquitto's writes do not come through sockbuf.c (libmqlb). */
void mq_hold_acks(struct mq *mq);
/* The held writes go: 1 if the PUBACK of every message taken so far is now
 * in the kernel, on the connection (up, nothing left unwritten, and the
 * broker's resends after its connect over: the PUBACKs lost with an earlier
 * connection have been written again). */
int mq_release_acks(struct mq *mq);
/* Send DISCONNECT and write it at once; no more reconnects. Not from inside
 * an mq callback (libmosquitto holds its lock there): defer to the loop. */
void mq_disconnect(struct mq *mq);
int mq_v5(const struct mq *mq);
void mq_destroy(struct mq *mq);

#endif
