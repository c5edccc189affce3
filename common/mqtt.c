/* SPDX-License-Identifier: MIT */
/* mqtt.c: libmosquitto inside libev through mosquitto_socket() and
 * loop_read/loop_write/loop_misc, with back-off reconnects. */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "collect.h"
#include "hash.h"
#include "log.h"
#include "mqtt.h"
#include "sockbuf.h"

#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0
#define MQ_READ_BURST 256 /* packets read in one wake-up, at most */

/* The last OpenSSL error libmosquitto logged: the reason a handshake failed
 * ("certificate verify failed"), which its return code does not carry. */
static char tls_error[200];

/* Paused with a full backlog: the socket waits unread. Until CONNACK it is
 * read all the same, or a reconnect could never complete. */
static int backlog_full(const struct mq *mq)
{
	return mq->read_paused && mq->connected &&
	       (mq->backlog_n >= MQ_BACKLOG_MSGS || mq->backlog_bytes >= MQ_BACKLOG_BYTES);
}

static void update_io(struct mq *mq)
{
	int fd = mosquitto_socket(mq->m);
	int ev = 0;

	if (fd >= 0) {
		if (!backlog_full(mq))
			ev |= EV_READ;
		if (mosquitto_want_write(mq->m) || sb_blocked(fd))
			ev |= EV_WRITE;
	}
	if (fd != mq->io.fd || ev != (mq->io.events & (EV_READ | EV_WRITE)) || !ev_is_active(&mq->io)) {
		ev_io_stop(mq->loop, &mq->io);
		if (fd >= 0 && ev) {
			ev_io_set(&mq->io, fd, ev);
			ev_io_start(mq->loop, &mq->io);
		}
	}
	/* Bytes already read from the socket wake nobody: read them in the next
	 * loop turn (not this one, whose prepare watchers may have run). */
	if ((ev & EV_READ) && sb_unread(fd) && !ev_is_active(&mq->kick))
		ev_timer_start(mq->loop, &mq->kick);
}

static void schedule_retry(struct mq *mq)
{
	if (mq->stopping || ev_is_active(&mq->retry))
		return;
	ev_timer_set(&mq->retry, mq->backoff, 0);
	ev_timer_start(mq->loop, &mq->retry);
	mq->backoff = mq->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : mq->backoff * 2;
}

/* What a libmosquitto error code means here, for one diagnostic line. */
static const char *why(int rc)
{
	static char buf[sizeof tls_error + 8];

	if (rc == MOSQ_ERR_TLS && *tls_error) {
		snprintf(buf, sizeof buf, "TLS: %s", tls_error);
		return buf;
	}
	return rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
}

static void failed_attempt(struct mq *mq, const char *reason)
{
	mq->fails++;
	if (mq->o->retries > 0 && mq->fails > mq->o->retries)
		die(EXIT_UNREACH, "%s %s:%d unreachable after %d attempts: %s", mq->name,
		    mq->o->host, mq->o->port, mq->fails, reason);
	/* Say it once, then only now and then, so a long outage stays readable. */
	if (mq->fails == 1 || mq->fails % 20 == 0)
		warnl("%s %s:%d: %s; retrying", mq->name, mq->o->host, mq->o->port, reason);
	schedule_retry(mq);
}

/* libmosquitto 2.0 hands a failed TLS handshake back from loop_read or
 * loop_write with the socket closed and no disconnect callback: without
 * this, a wrong CA left the command silent and never retrying. */
static void lost_quietly(struct mq *mq, int rc)
{
	if (rc == MOSQ_ERR_SUCCESS || mq->stopping || mq->connected ||
	    mosquitto_socket(mq->m) >= 0 || ev_is_active(&mq->retry))
		return;
	failed_attempt(mq, why(rc));
}

static void hold(struct mq *mq, int on)
{
	mq->held = on;
	sb_hold(mosquitto_socket(mq->m), on);
}

/* What libmosquitto wrote goes to the socket in one write(2) a loop turn,
 * unless it is held (mq_hold_acks). A failed connection shows on the next
 * read. */
static void flush(struct mq *mq)
{
	int fd = mosquitto_socket(mq->m);

	if (sb_flush(fd) < 0)
		debugl("%s: write: %s", mq->name, strerror(errno));
}

/* A new socket of ours: closed by a crash, it resets the connection and
 * what the kernel has not sent yet never is. */
static void abort_on_close(struct mq *mq, int on)
{
	struct linger l = { .l_onoff = on, .l_linger = 0 };
	int fd = mosquitto_socket(mq->m);

	if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) < 0)
		warnl("%s: SO_LINGER: %s", mq->name, strerror(errno));
}

void mq_hold_acks(struct mq *mq)
{
	/* Held in user space, or not at all: then every PUBACK would leave
	 * before its message is safe. */
	if (!sb_active())
		die(EXIT_SYSERR, "%s: libmosquitto's writes cannot be held here", mq->name);
	mq->hold_acks = 1;
	abort_on_close(mq, 1);
}

int mq_release_acks(struct mq *mq)
{
	int fd = mosquitto_socket(mq->m);

	if (mq->held)
		hold(mq, 0);
	flush(mq);
	update_io(mq);
	return mq->connected && fd >= 0 && fd == mosquitto_socket(mq->m) && !sb_unsent(fd) &&
	       !mosquitto_want_write(mq->m) && !mq->resend_check;
}

/* libmosquitto 2.0 reads one packet a call, whatever max_packets says: read
 * on while the socket holds more, so a burst costs one loop iteration (one
 * wake-up, one spool write, one flush of records and acks), not one each. */
static int read_burst(struct mq *mq)
{
	int rc = MOSQ_ERR_SUCCESS;

	for (int i = 0; i < MQ_READ_BURST; i++) {
		unsigned long before = mq->ncb;
		int fd, avail = 0;

		rc = mosquitto_loop_read(mq->m, 1);
		fd = mosquitto_socket(mq->m);
		if (rc != MOSQ_ERR_SUCCESS || fd < 0 || mq->stopping || backlog_full(mq))
			break;
		/* No callback: the socket ran dry (one read said so), or half a
		 * packet came, or a whole one that has none (PINGRESP, QoS 2's
		 * PUBREC and PUBREL): go on only if more bytes wait. */
		if (mq->ncb == before && !sb_unread(fd) &&
		    (sb_dry(fd) || ioctl(fd, FIONREAD, &avail) < 0 || avail <= 0))
			break;
	}
	return rc;
}

static void serve(struct mq *mq, int revents)
{
	int rc = MOSQ_ERR_SUCCESS;

	mq->in_lib++;
	*tls_error = '\0';
	if ((revents & EV_READ) && mq->hold_acks && !mq->held)
		hold(mq, 1);
	if (revents & EV_READ) {
		rc = read_burst(mq);
		mq->got = 1;
	}
	if (rc == MOSQ_ERR_SUCCESS && (revents & EV_WRITE) && mosquitto_socket(mq->m) >= 0) {
		flush(mq);
		rc = mosquitto_loop_write(mq->m, 64);
	}
	mq->in_lib--;
	lost_quietly(mq, rc);
	update_io(mq);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct mq *mq = w->data;

	if (revents & EV_READ)
		sb_readable(w->fd);
	serve(mq, revents);
}

/* Bytes read earlier wait in the buffer: serve them, asking the kernel for
 * more only if the last read did not empty the socket. */
static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct mq *mq = w->data;

	if (mosquitto_socket(mq->m) >= 0 && !backlog_full(mq))
		serve(mq, EV_READ);
}

/* A broker with Nagle's algorithm on (mosquitto's default: no
 * set_tcp_nodelay) holds its next small packet to a client (a job, an
 * award, a done) until the client has acknowledged the last small one it
 * sent (a PUBACK, a QoS 0 job, a PINGRESP), and the client's kernel delays
 * that ACK up to 40 ms unless it has data to send: a worker waited that long
 * for each next job. So a turn that read from the broker and wrote nothing,
 * which would have carried the ACK, sends it at once: TCP_QUICKACK sends an
 * ACK the kernel holds (tcp(7)). */
static void quickack(struct mq *mq)
{
	int fd = mosquitto_socket(mq->m), one = 1;

	if (fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one) < 0)
		debugl("%s: TCP_QUICKACK: %s", mq->name, strerror(errno));
}

static void prep_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct mq *mq = w->data;
	int fd = mosquitto_socket(mq->m), rc = MOSQ_ERR_SUCCESS, queued, sent;

	/* Publishes queued inside callbacks go out before the loop blocks. */
	queued = fd >= 0 && mosquitto_want_write(mq->m);
	mq->in_lib++;
	*tls_error = '\0';
	if (queued)
		rc = mosquitto_loop_write(mq->m, 64);
	mq->in_lib--;
	flush(mq);
	/* Whether this turn sent anything, which carried the ACK: what
	 * sockbuf.c handed the kernel (acks released, flushes, this one);
	 * without it (libmqlb), what libmosquitto wrote now, or at once,
	 * outside a callback, when we published. */
	if (sb_active())
		sent = sb_sent(fd) != mq->sent_turn;
	else
		sent = queued || mq->npub != mq->npub_turn;
	mq->sent_turn = sb_sent(fd);
	mq->npub_turn = mq->npub;
	if (mq->got && !sent)
		quickack(mq);
	mq->got = 0;
	lost_quietly(mq, rc);
	update_io(mq);
}

static void misc_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct mq *mq = w->data;

	/* Paused too: the backlog keeps the socket read, so libmosquitto's
	 * keepalive and its PINGRESP work as ever. */
	if (mosquitto_socket(mq->m) >= 0) {
		mq->in_lib++;
		mosquitto_loop_misc(mq->m);
		mq->in_lib--;
	}
	update_io(mq);
}

static void attempt(struct mq *mq)
{
	int rc;

	*tls_error = '\0';
	if (!mq->o->clean && mq->o->version == MQTT_PROTOCOL_V5 && !mq->ever_connected) {
		/* An MQTT 5 session ends at disconnect unless CONNECT gives it an
		 * expiry; only the _v5 call takes properties, and it waits for the
		 * TCP connect (libmosquitto 2.0 has no asynchronous one). Later
		 * reconnects reuse the properties. */
		mosquitto_property *props = NULL;

		mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, UINT32_MAX);
		rc = mosquitto_connect_bind_v5(mq->m, mq->o->host, mq->o->port, mq->o->keepalive,
					       NULL, props);
		mosquitto_property_free_all(&props);
	} else if (mq->ever_connected || mq->fails > 0)
		rc = mosquitto_reconnect_async(mq->m);
	else
		rc = mosquitto_connect_async(mq->m, mq->o->host, mq->o->port, mq->o->keepalive);
	if (rc != MOSQ_ERR_SUCCESS) {
		failed_attempt(mq, why(rc));
		return;
	}
	mq->held = 0;
	sb_attach(mosquitto_socket(mq->m));
	if (mq->hold_acks)
		abort_on_close(mq, 1);
	update_io(mq);
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents) { attempt(w->data); }

/* We hear nothing while reading is paused or, once connected, while the
 * connection is down: mq_heard() stops for as long. Called after either
 * changes. */
static void deaf_update(struct mq *mq)
{
	ev_tstamp now = ev_now(mq->loop);
	int deaf = mq->read_paused || (mq->ever_connected && !mq->connected);

	if (deaf && !mq->deaf)
		mq->deaf_at = now;
	else if (!deaf && mq->deaf)
		mq->deaf_total += now - mq->deaf_at;
	mq->deaf = deaf;
}

static void resend_reset(struct mq *mq, int present);

static void on_connect(struct mosquitto *m, void *arg, int rc, int flags, const mosquitto_property *p)
{
	struct mq *mq = arg;
	int first = !mq->ever_connected;

	mq->ncb++;
	if (rc != 0) {
		/* MQTT 3.1.1 CONNACK codes are below 0x80, MQTT 5 reasons above:
		 * reason_string calls the 3.1.1 ones "Unknown reason". */
		const char *r = rc < 0x80 ? mosquitto_connack_string(rc) : mosquitto_reason_string(rc);

		/* Refused by the broker (auth, id): not a network hiccup. */
		if (rc == MQTT_RC_NOT_AUTHORIZED || rc == MQTT_RC_BAD_USERNAME_OR_PASSWORD ||
		    rc == CONNACK_REFUSED_NOT_AUTHORIZED || rc == CONNACK_REFUSED_BAD_USERNAME_PASSWORD)
			die(EXIT_UNREACH, "%s %s:%d refused the connection: %s", mq->name, mq->o->host,
			    mq->o->port, r);
		failed_attempt(mq, r);
		return;
	}
	if (mq->fails > 0 || mq->ever_connected)
		infol("%s %s:%d: connected", mq->name, mq->o->host, mq->o->port);
	mq->connected = 1;
	mq->ever_connected = 1;
	deaf_update(mq);
	resend_reset(mq, flags & 1);
	mq->fails = 0;
	mq->backoff = BACKOFF_MIN;
	if (mq->cb->connected)
		mq->cb->connected(mq, first, mq->arg);
}

static void on_disconnect(struct mosquitto *m, void *arg, int rc, const mosquitto_property *p)
{
	struct mq *mq = arg;
	int was = mq->connected;

	mq->ncb++;
	mq->connected = 0;
	deaf_update(mq);
	ev_io_stop(mq->loop, &mq->io);
	if (mq->stopping)
		return;
	if (was) {
		warnl("%s %s:%d: connection lost (%s); reconnecting", mq->name, mq->o->host,
		      mq->o->port, mosquitto_strerror(rc));
		if (mq->cb->disconnected)
			mq->cb->disconnected(mq, mq->arg);
		schedule_retry(mq);
	} else {
		failed_attempt(mq, why(rc));
	}
}

/* A hash of a message's topic, length and payload (its first and last 256
 * bytes: a resend is the same message, its packet identifier tells the
 * rest apart). FNV-1a. */
static uint64_t seen_hash(const struct mosquitto_message *msg)
{
	const unsigned char *p = msg->payload;
	size_t n = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
	uint64_t h = fnv64(FNV64_BASIS, msg->topic, strlen(msg->topic) + 1);
	unsigned char len[sizeof n];

	for (size_t i = 0; i < sizeof n; i++)
		len[i] = (unsigned char)(n >> (8 * i));
	h = fnv64(h, len, sizeof len);
	if (n > 512)
		return fnv64(fnv64(h, p, 256), p + n - 256, 256);
	return fnv64(h, p, n);
}

void mq_seen_add(struct mq *mq, int mid, uint64_t h)
{
	if (!mq->seen && !(mq->seen = calloc(MQ_SEEN, sizeof *mq->seen)))
		die(EXIT_SYSERR, "out of memory");
	mq->seen[mq->seen_n % MQ_SEEN] = (struct mq_seen){ .h = h, .mid = mid };
	mq->seen_n++;
}

uint64_t mq_msg_hash(const struct mq *mq) { return mq->msg_h; }

/* Connected: to the session we had (present), the broker sends first what
 * it sent us before and has no PUBACK for; what we took of that is in
 * this connection's ring, now the one before. To a new session, none. */
static void resend_reset(struct mq *mq, int present)
{
	/* A check that never ended (the connection dropped during the
	 * resends, or before them) goes on against the same ring. */
	if (!mq->resend_check) {
		struct mq_seen *t = mq->prev;

		mq->prev = mq->seen;
		mq->prev_n = mq->seen_n;
		mq->seen = t;
	}
	mq->seen_n = 0;
	mq->resend_check = present && mq->prev_n > 0;
	if (!mq->resend_check)
		mq->prev_n = 0;
	mq->resends = 0;
	if (!mq->resend_check && mq->cb->resends_over)
		mq->cb->resends_over(mq, mq->arg);
}

/* Whether a QoS 1 message is a resend of one taken on the connection
 * before: the same packet identifier, topic and payload, among the first
 * after the reconnect. The broker resends in the order it sent, and what
 * reached us is the first part of that: the first message that is not
 * one we had ends the check (a new one has the next identifier). Such a
 * message is acknowledged (libmosquitto has) and dropped: taken twice, a
 * job would run twice. */
static int resent(struct mq *mq, const struct mosquitto_message *msg)
{
	uint64_t h;
	unsigned long n;

	mq->msg_h = 0;
	/* A clean session is never present again: nothing to keep. */
	if (msg->qos != 1 || mq->o->clean || !mq->o->id)
		return 0;
	h = mq->msg_h = seen_hash(msg);
	if (mq->resend_check) {
		n = mq->prev_n < MQ_SEEN ? mq->prev_n : MQ_SEEN;
		for (unsigned long i = 1; i <= n; i++) {
			const struct mq_seen *e = &mq->prev[(mq->prev_n - i) % MQ_SEEN];

			if (e->mid == msg->mid && e->h == h) {
				mq_seen_add(mq, msg->mid, h);
				mq->resends++;
				return 1;
			}
		}
		mq->resend_check = 0;
		if (mq->resends)
			infol("%s %s:%d: %lu message%s the broker sent again after the reconnect "
			      "had been taken before: dropped", mq->name, mq->o->host, mq->o->port,
			      mq->resends, mq->resends == 1 ? "" : "s");
		if (mq->cb->resends_over)
			mq->cb->resends_over(mq, mq->arg);
	}
	mq_seen_add(mq, msg->mid, h);
	return 0;
}

/* What a held message counts towards MQ_BACKLOG_BYTES. */
static size_t held_size(const struct mosquitto_message *msg)
{
	return sizeof(struct mq_held) + strlen(msg->topic) + (size_t)msg->payloadlen;
}

static void on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
		       const mosquitto_property *p)
{
	struct mq *mq = arg;
	struct mq_held *h;

	mq->ncb++;
	collect_note(1);
	if (!mq->cb->message || resent(mq, msg))
		return;
	if (!mq->read_paused && !mq->backlog) {
		mq->cb->message(mq, msg, p, mq->arg);
		return;
	}
	/* Paused, or older messages still wait: kept, in order. */
	h = calloc(1, sizeof *h);
	if (!h || mosquitto_message_copy(&h->msg, msg) != MOSQ_ERR_SUCCESS ||
	    (p && mosquitto_property_copy_all(&h->props, p) != MOSQ_ERR_SUCCESS))
		die(EXIT_SYSERR, "out of memory");
	if (mq->cb->held)
		h->tag = mq->cb->held(mq, msg, p, mq->arg);
	*mq->backlog_tail = h;
	mq->backlog_tail = &h->next;
	mq->backlog_n++;
	mq->backlog_bytes += held_size(msg);
	if (mq->backlog_n > mq->backlog_max_seen)
		mq->backlog_max_seen = mq->backlog_n;
}

static void held_free(struct mq *mq, struct mq_held *h)
{
	mq->backlog_n--;
	mq->backlog_bytes -= held_size(&h->msg);
	mosquitto_message_free_contents(&h->msg);
	mosquitto_property_free_all(&h->props);
	free(h);
}

/* Resumed: what the pause held goes out first, in order, until the
 * consumer pauses again. From the loop, never inside another callback. */
static void deliver(struct mq *mq, int all)
{
	struct mq_held *h;

	while ((all || !mq->read_paused) && (h = mq->backlog)) {
		mq->backlog = h->next;
		if (!mq->backlog)
			mq->backlog_tail = &mq->backlog;
		mq->delivering = h;
		mq->msg_h = 0; /* its hash was of when it was read */
		mq->cb->message(mq, &h->msg, h->props, mq->arg);
		mq->delivering = NULL;
		held_free(mq, h);
	}
}

static void resume_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct mq *mq = w->data;

	deliver(mq, 0);
	update_io(mq);
}

void mq_deliver_backlog(struct mq *mq)
{
	ev_timer_stop(mq->loop, &mq->resume);
	deliver(mq, 1);
}

void *mq_held_tag(const struct mq *mq) { return mq->delivering ? mq->delivering->tag : NULL; }

static void on_subscribe(struct mosquitto *m, void *arg, int mid, int n, const int *granted,
			 const mosquitto_property *p)
{
	struct mq *mq = arg;

	mq->ncb++;
	if (mq->cb->subscribed)
		mq->cb->subscribed(mq, mid, n, granted, mq->arg);
}

static void on_publish(struct mosquitto *m, void *arg, int mid, int reason, const mosquitto_property *p)
{
	struct mq *mq = arg;

	mq->ncb++;
	if (mq->cb->published)
		mq->cb->published(mq, mid, reason, mq->arg);
}

static void on_log(struct mosquitto *m, void *arg, int level, const char *s)
{
	/* libmosquitto is chatty: its notices are our debug lines. */
	if ((level & MOSQ_LOG_ERR) && !strncmp(s, "OpenSSL Error", 13)) {
		const char *r = strstr(s, "::");

		snprintf(tls_error, sizeof tls_error, "%s", r ? r + 2 : s);
	}
	if (level & (MOSQ_LOG_ERR))
		debugl("libmosquitto: %s", s);
	else if (log_level() >= L_DEBUG && !(level & MOSQ_LOG_DEBUG))
		debugl("libmosquitto: %s", s);
}

void mq_init(struct mq *mq, struct ev_loop *loop, const struct mq_opts *o,
	     const struct mq_cb *cb, void *arg)
{
	static int lib;


	if (!lib++)
		mosquitto_lib_init();
	memset(mq, 0, sizeof *mq);
	mq->loop = loop;
	mq->o = o;
	mq->cb = cb;
	mq->arg = arg;
	mq->name = "broker";
	mq->backoff = BACKOFF_MIN;
	sb_capture_wakeup(1);
	mq->m = mosquitto_new(o->id, o->clean || !o->id, mq);
	sb_capture_wakeup(0);
	if (!mq->m)
		die(EXIT_SYSERR, "cannot create MQTT client: %s", strerror(errno));
	mosquitto_int_option(mq->m, MOSQ_OPT_PROTOCOL_VERSION, o->version);
	mosquitto_int_option(mq->m, MOSQ_OPT_TCP_NODELAY, 1);
	if (o->version == MQTT_PROTOCOL_V5)
		mosquitto_int_option(mq->m, MOSQ_OPT_RECEIVE_MAXIMUM, 65535);
	if (o->user && mosquitto_username_pw_set(mq->m, o->user, o->pass) != MOSQ_ERR_SUCCESS)
		die(EXIT_SYSERR, "cannot set username");
	if (o->cafile || o->capath) {
		int rc = mosquitto_tls_set(mq->m, o->cafile, o->capath, o->cert, o->key, NULL);

		if (rc != MOSQ_ERR_SUCCESS)
			die(EXIT_USAGE, "TLS settings refused: %s", mosquitto_strerror(rc));
		if (o->insecure)
			mosquitto_tls_insecure_set(mq->m, 1);
	}
	if (o->will_topic &&
	    mosquitto_will_set_v5(mq->m, o->will_topic, 0, NULL, o->will_qos, 0, NULL) != MOSQ_ERR_SUCCESS)
		die(EXIT_SYSERR, "cannot set the last will on %s", o->will_topic);
	mosquitto_connect_v5_callback_set(mq->m, on_connect);
	mosquitto_disconnect_v5_callback_set(mq->m, on_disconnect);
	mosquitto_message_v5_callback_set(mq->m, on_message);
	mosquitto_subscribe_v5_callback_set(mq->m, on_subscribe);
	mosquitto_publish_v5_callback_set(mq->m, on_publish);
	mosquitto_log_callback_set(mq->m, on_log);
	ev_io_init(&mq->io, io_cb, -1, EV_READ);
	mq->io.data = mq;
	ev_timer_init(&mq->misc, misc_cb, 0.5, 0.5);
	mq->misc.data = mq;
	ev_timer_init(&mq->retry, retry_cb, 0, 0);
	mq->retry.data = mq;
	ev_prepare_init(&mq->prep, prep_cb);
	/* after every other prepare watcher: what they publish leaves with
	 * this turn's one write */
	ev_set_priority(&mq->prep, EV_MINPRI);
	mq->prep.data = mq;
	ev_timer_init(&mq->kick, kick_cb, 0, 0);
	mq->kick.data = mq;
	ev_timer_init(&mq->resume, resume_cb, 0, 0);
	mq->resume.data = mq;
	mq->backlog_tail = &mq->backlog;
}

void mq_start(struct mq *mq)
{
	ev_timer_start(mq->loop, &mq->misc);
	ev_prepare_start(mq->loop, &mq->prep);
	/* The prepare watcher alone must not keep the loop running. */
	ev_unref(mq->loop);
	attempt(mq);
}

void mq_pause_read(struct mq *mq, int paused)
{
	mq->read_paused = paused;
	deaf_update(mq);
	if (!paused && mq->backlog)
		ev_timer_start(mq->loop, &mq->resume);
	update_io(mq);
}

ev_tstamp mq_heard(const struct mq *mq)
{
	ev_tstamp now = ev_now(mq->loop);

	return now - mq->deaf_total - (mq->deaf ? now - mq->deaf_at : 0);
}

int mq_v5(const struct mq *mq) { return mq->o->version == MQTT_PROTOCOL_V5; }

int mq_publish(struct mq *mq, int *mid, const char *topic, size_t n, const void *payload,
	       int qos, int retain, const mosquitto_property *props)
{
	mq->npub++;
	return mosquitto_publish_v5(mq->m, mid, topic, (int)n, payload, qos, retain,
				    mq_v5(mq) ? props : NULL);
}

int mq_subscribe(struct mq *mq, int *mid, const char *filter, int qos, int subid)
{
	mosquitto_property *p = NULL;
	int rc;

	if (subid > 0 && mq_v5(mq))
		mosquitto_property_add_varint(&p, MQTT_PROP_SUBSCRIPTION_IDENTIFIER, (uint32_t)subid);
	rc = mosquitto_subscribe_v5(mq->m, mid, filter, qos, 0, p);
	mosquitto_property_free_all(&p);
	return rc;
}

int mq_unsubscribe(struct mq *mq, const char *filter)
{
	return mosquitto_unsubscribe(mq->m, NULL, filter);
}

void mq_disconnect(struct mq *mq)
{
	mq->stopping = 1;
	ev_timer_stop(mq->loop, &mq->retry);
	if (mq->in_lib) {
		/* Inside a libmosquitto callback its callback lock is held and
		 * writing DISCONNECT would call back into it: callers defer
		 * their exit to the loop (see mq_disconnect in mqtt.h). */
		warnl("%s: disconnect from inside a callback; connection dropped", mq->name);
		mq->connected = 0;
		return;
	}
	if (mq->connected) {
		/* Acks released: a graceful close. Still held, the caller could
		 * not keep what was read: the reset discards them with the
		 * DISCONNECT, and the broker sends those messages again. */
		if (mq->hold_acks && !mq->held)
			abort_on_close(mq, 0);
		mosquitto_disconnect(mq->m);
		/* Write what is queued (DISCONNECT included) right away. */
		while (mosquitto_socket(mq->m) >= 0 && mosquitto_want_write(mq->m))
			if (mosquitto_loop_write(mq->m, 64) != MOSQ_ERR_SUCCESS)
				break;
	}
	mq->connected = 0;
}

void mq_destroy(struct mq *mq)
{
	ev_io_stop(mq->loop, &mq->io);
	ev_timer_stop(mq->loop, &mq->misc);
	ev_timer_stop(mq->loop, &mq->retry);
	ev_ref(mq->loop);
	ev_prepare_stop(mq->loop, &mq->prep);
	ev_timer_stop(mq->loop, &mq->kick);
	ev_timer_stop(mq->loop, &mq->resume);
	while (mq->backlog) {
		struct mq_held *h = mq->backlog;

		mq->backlog = h->next;
		held_free(mq, h);
	}
	mq->backlog_tail = &mq->backlog;
	free(mq->seen);
	free(mq->prev);
	mq->seen = mq->prev = NULL;
	mosquitto_destroy(mq->m);
}
