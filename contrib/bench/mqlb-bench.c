/* SPDX-License-Identifier: MIT */
/* mqlb-bench: load generator and meter. Publishes timestamped jobs to a
 * private broker and runs simulated workers in-process, fed through the mqlb
 * pipeline (mqlb-sub | mqlb-auction | mqlb-dispatch, libmqlb workers), a
 * plain $share subscription and a private RabbitMQ (AMQP workers, prefetch =
 * slots); prints latency, throughput, jobs per worker, lost and duplicated
 * side by side. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#ifdef HAVE_LIBRABBITMQ
#ifdef __has_include
#if __has_include(<rabbitmq-c/amqp.h>)
#define RABBITMQ_C_DIR 1 /* librabbitmq 0.12 moved its headers */
#endif
#endif
#ifdef RABBITMQ_C_DIR
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif
#endif

#include "log.h"
#include "mqlb.h"
#include "mqtt.h"
#include "opt.h"

static const char usage[] =
	"usage: mqlb-bench [-v] [--quiet] [--scenario 1|2|3|4] [--smoke]\n"
	"                  [--sides mqlb,share,rabbit | --mqlb | --share | --rabbit]\n"
	"                  [--parallel | --serial] [--rabbitmq-server path]\n"
	"                  [--workers n] [--slots n] [--ahead n] [--batch n]\n"
	"                  [--service seconds,...]\n"
	"                  [--rate jobs/s | --load fraction | --max] [--duration seconds]\n"
	"                  [--grace seconds] [--drain seconds] [--window n] [--size bytes]\n"
	"                  [--bindir dir] [--nagle]\n"
	"                  [--broker path] [--csv] [--plot file.png] [--keep] [--label text]\n";

#define MAXW 64
#define TOPIC "bench/jobs"
#define GROUP "bench"
#define NS 1000000000.0
/* RabbitMQ's MQTT plugin publishes TOPIC to amq.topic with '/' as '.' */
#define RABBIT_KEY "bench.jobs"
#define RABBIT_QUEUE "mqlb-bench"
#define RABBIT_UP_SECS 60 /* about 10 s here, 23 s on a cold first boot */

enum side { S_MQLB, S_SHARE, S_RABBIT, NSIDES };
static const char *const side_name[NSIDES] = { "mqlb", "share", "rabbit" };
#ifdef HAVE_LIBRABBITMQ
#define ALL_SIDES 7
#else
#define ALL_SIDES 3
#endif

/* What one run asks for; --scenario fills it, later options override. */
static struct {
	int workers, slots;
	int ahead; /* mqlb workers: --ahead (mqlb-worker(1)) */
	int batch; /* mqlb workers: --batch (mqlb-worker(1)); -1: slots in scenario 2, else 0 */
	double service[MAXW];
	int nservice;
	double rate, load; /* jobs/s; or a fraction of capacity; both 0: max */
	double duration, grace, drain;
	long window;
	long size;
	int modes; /* a bit per enum side */
	int csv, keep, smoke, scenario;
	int nagle; /* the broker with mosquitto's stock setting: no set_tcp_nodelay */
	int parallel; /* all sides at once, each but the first in a forked child */
	const char *bindir, *broker, *plot, *label, *rabbitmq_server;
} cf = {
	.workers = 4, .slots = 1, .service = { 0.005 }, .nservice = 1, .rate = 100,
	.duration = 10, .grace = 5, .window = 1000, .size = 0, .modes = ALL_SIDES, .batch = -1,
	.broker = "mosquitto", .rabbitmq_server = "rabbitmq-server",
};

/* One published job, indexed by its sequence number. */
struct job {
	int64_t pub, start, done;
	uint16_t starts, dones;
	int16_t worker;
};

/* The results of one mode. */
struct result {
	const char *mode;
	int ok, child_died, broken; /* broken: a worker's AMQP connection failed */
	char why[512];
	unsigned long published, pubfail, done, lost, dup, dropped;
	unsigned long bdropped; /* the broker's $SYS/broker/publish/messages/dropped */
	char dropwhy[128];
	double jobs_s, offered;
	/* of the worker slots' time while publishing, the share spent on jobs:
	 * what a worker's wait for its next job costs (scenario 4) */
	double busy;
	double start[3], fin[3]; /* p50 p99 max, ms */
	unsigned long per_worker[MAXW];
	double *lat, *slat; /* sorted publish -> done and -> start, ms, for the plot */
	size_t nlat, nslat;
};

struct task;

/* A simulated worker: a libmqlb worker, a plain $share subscriber, or an
 * AMQP consumer. */
struct wsim {
	enum side side;
	int idx, slots, running, ready;
	double service;
	struct mqlb_worker *mw;
	struct mq mq;
	struct mq_opts mo;
	char cid[32];
	uint32_t *q; /* $share: jobs read while all slots were busy, FIFO */
	size_t qh, qt, qcap;
	int paused;
#ifdef HAVE_LIBRABBITMQ
	amqp_connection_state_t ac; /* RabbitMQ: channel 1 consumes, prefetch = slots */
	ev_io aio;
#endif
};

struct task {
	ev_timer t;
	struct wsim *w;
	const char *id; /* libmqlb's job id, valid until done */
	uint64_t tag;   /* AMQP delivery tag */
	uint32_t seq;
	int64_t begin;
	struct task *prev, *next; /* running tasks, so teardown can stop them */
};

enum phase { P_WAIT, P_SETTLE, P_RUN, P_DRAIN, P_END };

static struct ev_loop *loop;
static struct job *jobs;
static size_t capjobs;
static struct wsim ws[MAXW];
static struct mq pub;
static struct mq_opts pubo;
static int pub_connected, interrupted;
static enum phase phase;
static int64_t t0, t_stop, t_phase, t_progress;
static unsigned long last_done;
static unsigned long published, done_unique, pubfail;
static int64_t busy_ns; /* slot time on jobs while publishing */
static double rate;
static ev_timer ctl, tick;
static ev_signal sigint_w, sigterm_w;
static char *payload;
static size_t payload_len;
static struct result *cur;
static struct task *tasks;

/* Children: the broker and the pipeline, killed on any exit. */
static pid_t kids[4];
static const char *kidname[4];
static ev_child kidw[4];
static int nkids;

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Gone: reaped here, or already by libev (the default loop reaps). */
static int reaped(pid_t pid, int *st)
{
	pid_t r = waitpid(pid, st, WNOHANG);

	return r == pid || (r < 0 && errno == ECHILD);
}

/* A child that ends before we stop it makes the run fail, with its status. */
static void child_cb(struct ev_loop *l, ev_child *w, int revents)
{
	int i = (int)(intptr_t)w->data, st = w->rstatus;
	size_t n;

	ev_child_stop(l, w);
	kids[i] = 0;
	if (!cur)
		return;
	n = strlen(cur->why);
	snprintf(cur->why + n, sizeof cur->why - n, "%s%s %s %d", n ? "; " : "during the run: ",
		 kidname[i], WIFSIGNALED(st) ? "killed by signal" : "exited with status",
		 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	cur->child_died = 1;
}

static void kill_kids(void)
{
	int i, tries;

	for (i = 0; i < nkids; i++)
		ev_child_stop(loop, &kidw[i]);

	for (i = 0; i < nkids; i++)
		if (kids[i] > 0)
			kill(kids[i], SIGTERM);
	for (tries = 0; tries < 40; tries++) {
		int left = 0;

		for (i = 0; i < nkids; i++)
			if (kids[i] > 0) {
				if (reaped(kids[i], NULL))
					kids[i] = 0;
				else
					left++;
			}
		if (!left)
			break;
		usleep(50000);
	}
	for (i = 0; i < nkids; i++)
		if (kids[i] > 0) {
			kill(kids[i], SIGKILL);
			waitpid(kids[i], NULL, 0);
			kids[i] = 0;
		}
	nkids = 0;
}

/* Wait up to secs for child i to exit by itself. */
static void wait_kid(int i, double secs)
{
	int64_t end = now_ns() + (int64_t)(secs * NS);

	while (kids[i] > 0 && now_ns() < end) {
		if (reaped(kids[i], NULL))
			kids[i] = 0;
		else
			usleep(20000);
	}
}

/* The auction first, so its drop records still flow through the
 * dispatcher; then the intake; the dispatcher ends at end of input. */
static void pipeline_stop(void)
{
	if (nkids < 4)
		return;
	for (int i = 0; i < nkids; i++)
		ev_child_stop(loop, &kidw[i]);
	kill(kids[2], SIGTERM);
	wait_kid(2, 5);
	kill(kids[1], SIGTERM);
	wait_kid(1, 3);
	wait_kid(3, 3);
}

static void *xrealloc(void *p, size_t n)
{
	if (!(p = realloc(p, n)))
		die(EXIT_SYSERR, "out of memory");
	return p;
}

/* ---- children ------------------------------------------------------------- */

/* Run argv with the given stdin/stdout/stderr and, when ready >= 0, that
 * descriptor as fd 3 (for --ready-fd 3). */
static pid_t spawn(char *const argv[], int in, int out, int err, int ready)
{
	pid_t pid = fork();

	if (pid < 0)
		die(EXIT_SYSERR, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (in >= 0)
			dup2(in, 0);
		if (out >= 0)
			dup2(out, 1);
		if (err >= 0)
			dup2(err, 2);
		if (ready >= 0)
			dup2(ready, 3);
		execvp(argv[0], argv);
		fprintf(stderr, "mqlb-bench: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	kidname[nkids] = argv[0];
	ev_child_init(&kidw[nkids], child_cb, pid, 0);
	kidw[nkids].data = (void *)(intptr_t)nkids;
	ev_child_start(loop, &kidw[nkids]);
	kids[nkids++] = pid;
	return pid;
}

/* The port of a TCP socket bound to a (its port 0: the kernel's pick), or
 * -1 when the bind fails. The socket is closed again. */
static int bind_port(struct sockaddr_in *a)
{
	socklen_t len = sizeof *a;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)a, sizeof *a) == 0 &&
	    getsockname(fd, (struct sockaddr *)a, &len) == 0)
		port = ntohs(a->sin_port);
	close(fd);
	return port;
}

/* A free 127.0.0.1 port below the kernel's ephemeral range, where the
 * connections of every other program take theirs: a port found free
 * there can be one's by the time a slow server (RabbitMQ, 10 s) binds
 * it. The kernel's pick when that range starts too low to leave room. */
static int free_port(void)
{
	static uint64_t x;
	static pid_t seeded;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int port = -1, lo = 32768, hi;
	FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re");

	if (f) {
		if (fscanf(f, "%d %d", &lo, &hi) != 2)
			lo = 32768;
		fclose(f);
	}
	if (seeded != getpid()) { /* --parallel's sides are forks: each its own */
		seeded = getpid();
		x = ((uint64_t)now_ns() ^ (uint64_t)seeded << 32) | 1;
	}
	for (int i = 0; lo > 11024 && i < 200 && port < 0; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		a.sin_port = htons((uint16_t)(10000 + x % (uint64_t)(lo - 10000)));
		port = bind_port(&a);
	}
	if (port < 0) {
		a.sin_port = 0;
		port = bind_port(&a);
	}
	return port;
}

static int port_open(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				 .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;

	ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

static int open_log(const char *dir, const char *name)
{
	char path[512];
	int fd;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0)
		die(EXIT_SYSERR, "%s: %s", path, strerror(errno));
	return fd;
}

/* A private mosquitto on a free 127.0.0.1 port, the same for both sides:
 * the defaults a user gets (queue and inflight limits included), but
 * TCP_NODELAY (README; not with --nagle) and $SYS every second for its
 * drop counter. */
static int broker_start(const char *dir)
{
	char conf[512];
	int tries, i, port, logfd;
	FILE *f;

	for (tries = 0; tries < 10; tries++) {
		if ((port = free_port()) < 0)
			die(EXIT_SYSERR, "no free port: %s", strerror(errno));
		snprintf(conf, sizeof conf, "%s/mosquitto.conf", dir);
		if (!(f = fopen(conf, "w")))
			die(EXIT_SYSERR, "%s: %s", conf, strerror(errno));
		fprintf(f, "listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
			   "set_tcp_nodelay %s\nsys_interval 1\n"
			   "log_dest stderr\nlog_type error\nlog_type warning\n",
			port, cf.nagle ? "false" : "true");
		fclose(f);
		logfd = open_log(dir, "mosquitto.log");
		{
			char *argv[] = { (char *)cf.broker, "-c", conf, NULL };
			pid_t pid = spawn(argv, -1, logfd, logfd, -1);

			close(logfd);
			for (i = 0; i < 100; i++) {
				if (port_open(port))
					return port;
				if (waitpid(pid, NULL, WNOHANG) == pid) {
					ev_child_stop(loop, &kidw[--nkids]);
					kids[nkids] = 0;
					break;
				}
				usleep(20000);
			}
			if (nkids > 0 && kids[nkids - 1] == pid) {
				kill(pid, SIGKILL);
				waitpid(pid, NULL, 0);
				ev_child_stop(loop, &kidw[--nkids]);
				kids[nkids] = 0;
			}
		}
	}
	die(EXIT_SYSERR, "cannot start %s (see %s/mosquitto.log)", cf.broker, dir);
}

static char *bin(const char *name)
{
	static char buf[4][512];
	static int n;
	char *b = buf[n++ % 4];

	if (cf.bindir)
		snprintf(b, 512, "%s/%s", cf.bindir, name);
	else
		snprintf(b, 512, "%s", name);
	return b;
}

/* mqlb-sub | mqlb-auction | mqlb-dispatch > records, each announcing
 * readiness on its own pipe. Returns 0 once all three are ready. */
static int pipeline_start(const char *dir, int port, char *why, size_t whylen)
{
	const char *names[3] = { "mqlb-sub", "mqlb-auction", "mqlb-dispatch" };
	char portbuf[16], spool[4096], sock[4096];
	int p1[2], p2[2], rdy[3][2], out, err, i, got = 0;
	struct pollfd pfd[3];
	int64_t deadline;

	snprintf(portbuf, sizeof portbuf, "%d", port);
	snprintf(spool, sizeof spool, "%s/sub.spool", dir);
	if (pipe2(p1, O_CLOEXEC) || pipe2(p2, O_CLOEXEC))
		die(EXIT_SYSERR, "pipe: %s", strerror(errno));
	out = open_log(dir, "records");
	err = open_log(dir, "pipeline.log");
	for (i = 0; i < 3; i++) {
		/* at the end, the auction hands back what still waits as drop
		 * records within a second */
		/* mqlb-sub spools as it does by default, in the run's own
		 * directory (never a leftover of an earlier run in $HOME); their
		 * stats are on DIR/mqlb-sub.sock and DIR/mqlb-auction.sock */
		char *argv[] = { bin(names[i]), "-h", "127.0.0.1", "-p", portbuf, "--ready-fd", "3",
				 i == 1 ? "--drain-timeout" : i == 0 ? "--spool" : NULL,
				 i == 1 ? "1" : spool, "--listen", sock, NULL };

		snprintf(sock, sizeof sock, "%s/%s.sock", dir, names[i]);
		if (pipe2(rdy[i], O_CLOEXEC))
			die(EXIT_SYSERR, "pipe: %s", strerror(errno));
		spawn(argv, i == 0 ? -1 : i == 1 ? p1[0] : p2[0], i == 0 ? p1[1] : i == 1 ? p2[1] : out,
		      err, rdy[i][1]);
		close(rdy[i][1]);
		pfd[i].fd = rdy[i][0];
		pfd[i].events = POLLIN;
	}
	close(p1[0]), close(p1[1]), close(p2[0]), close(p2[1]), close(out), close(err);
	deadline = now_ns() + 10 * (int64_t)1000000000;
	while (got < 3 && now_ns() < deadline) {
		char c;

		if (poll(pfd, 3, 100) < 0 && errno != EINTR)
			break;
		for (i = 0; i < 3; i++) {
			if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP)))
				continue;
			if (read(pfd[i].fd, &c, 1) != 1) {
				snprintf(why, whylen, "%s exited or closed --ready-fd before ready",
					 names[i]);
				got = -1;
				break;
			}
			close(pfd[i].fd);
			pfd[i].fd = -1;
			got++;
		}
		if (got < 0)
			break;
	}
	for (i = 0; i < 3; i++)
		if (pfd[i].fd >= 0)
			close(pfd[i].fd);
	if (got == 3)
		return 0;
	if (got >= 0)
		snprintf(why, whylen, "pipeline not ready after 10 s");
	return -1;
}

/* ---- jobs ----------------------------------------------------------------- */

static void publish_one(void)
{
	uint32_t seq = (uint32_t)published;
	int64_t t = now_ns();
	int n, rc;

	if (published >= capjobs) {
		size_t ncap = capjobs ? capjobs * 2 : 65536;

		jobs = xrealloc(jobs, ncap * sizeof *jobs);
		memset(jobs + capjobs, 0, (ncap - capjobs) * sizeof *jobs);
		capjobs = ncap;
	}
	/* "seq publish-ns", padded to --size */
	n = snprintf(payload, 64, "%u %lld ", seq, (long long)t);
	if ((size_t)n < payload_len)
		memset(payload + n, 'x', payload_len - (size_t)n);
	rc = mq_publish(&pub, NULL, TOPIC, (size_t)n > payload_len ? (size_t)n : payload_len,
			payload, 1, 0, NULL);
	if (rc != MOSQ_ERR_SUCCESS) {
		pubfail++;
		return;
	}
	jobs[seq].pub = t;
	jobs[seq].worker = -1;
	published++;
}

/* Max rate: keep --window jobs outstanding. */
static void top_up(void)
{
	int n = 0;

	if (phase != P_RUN || rate > 0)
		return;
	while (published - done_unique < (unsigned long)cf.window && n++ < 256)
		publish_one();
}

static int parse_job(const void *p, size_t len, uint32_t *seq, int64_t *ts)
{
	char buf[48], *end;
	unsigned long long s;
	long long t;

	if (len > sizeof buf - 1)
		len = sizeof buf - 1;
	memcpy(buf, p, len);
	buf[len] = 0;
	s = strtoull(buf, &end, 10);
	if (end == buf || *end != ' ')
		return -1;
	t = strtoll(end + 1, &end, 10);
	/* ours only: a sequence number we published, with its timestamp */
	if (s >= published || jobs[s].pub != t)
		return -1;
	*seq = (uint32_t)s;
	*ts = t;
	return 0;
}

static void job_finish(ev_timer *t);

static void task_cb(struct ev_loop *l, ev_timer *t, int revents) { job_finish(t); }

static struct task *job_begin(struct wsim *w, uint32_t seq, const char *id)
{
	struct task *k = xrealloc(NULL, sizeof *k);
	struct job *j = &jobs[seq];

	if (j->starts++ == 0) {
		j->start = now_ns();
		j->worker = (int16_t)w->idx;
	}
	w->running++;
	k->begin = now_ns();
	k->w = w;
	k->id = id;
	k->seq = seq;
	k->prev = NULL;
	k->next = tasks;
	if (tasks)
		tasks->prev = k;
	tasks = k;
	ev_timer_init(&k->t, task_cb, w->service, 0);
	ev_timer_start(loop, &k->t);
	return k;
}

static void share_next(struct wsim *w);
static void rabbit_ack(struct wsim *w, uint64_t tag);

static void task_unlink(struct task *k)
{
	if (k->prev)
		k->prev->next = k->next;
	else
		tasks = k->next;
	if (k->next)
		k->next->prev = k->prev;
}

static void job_finish(ev_timer *t)
{
	struct task *k = (struct task *)t;
	struct wsim *w = k->w;
	struct job *j = &jobs[k->seq];
	int64_t end = now_ns(), from, to;

	/* The part of the job inside the publishing window. */
	from = k->begin > t0 ? k->begin : t0;
	to = t_stop && t_stop < end ? t_stop : end;
	if (t0 && to > from)
		busy_ns += to - from;
	task_unlink(k);
	if (j->dones++ == 0) {
		j->done = now_ns();
		done_unique++;
		cur->per_worker[w->idx]++;
	}
	w->running--;
	if (w->side == S_MQLB)
		mqlb_worker_done(w->mw, k->id, 1, NULL, NULL, 0);
	else if (w->side == S_RABBIT)
		rabbit_ack(w, k->tag);
	free(k);
	if (w->side == S_SHARE)
		share_next(w);
	top_up();
}

/* ---- mqlb workers (libmqlb) ----------------------------------------------- */

static void mqlb_job(struct mqlb_worker *mw, const char *id, int qos, const char *mtopic,
		     const void *p, size_t len, const char *props, void *arg)
{
	struct wsim *w = arg;
	uint32_t seq;
	int64_t ts;

	if (parse_job(p, len, &seq, &ts) < 0) {
		warnl("worker %d: job %s is not ours", w->idx, id);
		mqlb_worker_done(mw, id, 0, "bad-job", NULL, 0);
		return;
	}
	job_begin(w, seq, id);
}

static void mqlb_ready(struct mqlb_worker *mw, void *arg) { ((struct wsim *)arg)->ready = 1; }

/* ---- $share workers ------------------------------------------------------- */

/* One job per free slot; what arrives while all are busy waits here and
 * reading stops, so the broker holds the rest (receive-maximum = slots). */
static void share_next(struct wsim *w)
{
	while (w->running < w->slots && w->qh != w->qt) {
		uint32_t seq = w->q[w->qh++ % w->qcap];

		job_begin(w, seq, NULL);
	}
	if (w->paused && w->qh == w->qt) {
		w->paused = 0;
		mq_pause_read(&w->mq, 0);
	}
}

static void share_message(struct mq *mq, const struct mosquitto_message *m,
			  const mosquitto_property *props, void *arg)
{
	struct wsim *w = arg;
	uint32_t seq;
	int64_t ts;

	if (parse_job(m->payload, (size_t)m->payloadlen, &seq, &ts) < 0)
		return;
	if (w->qt - w->qh == w->qcap) {
		size_t ncap = w->qcap ? w->qcap * 2 : 64, i;
		uint32_t *nq = xrealloc(NULL, ncap * sizeof *nq);

		for (i = 0; i < w->qt - w->qh; i++)
			nq[i] = w->q[(w->qh + i) % w->qcap];
		free(w->q);
		w->q = nq;
		w->qt -= w->qh;
		w->qh = 0;
		w->qcap = ncap;
	}
	w->q[w->qt++ % w->qcap] = seq;
	share_next(w);
	if (w->qh != w->qt && !w->paused) {
		w->paused = 1;
		mq_pause_read(&w->mq, 1);
	}
}

static void share_connected(struct mq *mq, int first, void *arg)
{
	mq_subscribe(mq, NULL, "$share/" GROUP "/" TOPIC, 1, 0);
}

static void share_subscribed(struct mq *mq, int mid, int n, const int *granted, void *arg)
{
	((struct wsim *)arg)->ready = 1;
}

static const struct mq_cb share_cb = {
	.connected = share_connected,
	.message = share_message,
	.subscribed = share_subscribed,
};

/* ---- RabbitMQ: a private node and AMQP workers --------------------------- */

/* The node, started once by the process that owns it (the parent under
 * --parallel) and stopped with rabbitmqctl on every way out. */
static struct {
	pid_t pid, owner;
	int amqp, mqtt, dist, exited, status, keep, atexit_set;
	char dir[64], node[64], server[512], ctl[512];
	ev_child cw;
} rmq;

/* Where rabbitmq-server is: as given, else on PATH or in the sbin dirs a
 * user's PATH may lack. Debian's /usr/sbin one only lets root (who becomes
 * rabbitmq) run it; anyone else runs the scripts it wraps, as themselves.
 * rabbitmqctl is taken from the same directory. */
static void rabbit_find(void)
{
	const char *name = cf.rabbitmq_server, *path = getenv("PATH");
	char dirs[4096], *save = NULL, *d, *slash;

	if (strchr(name, '/')) {
		snprintf(rmq.server, sizeof rmq.server, "%s", name);
	} else {
		snprintf(dirs, sizeof dirs, "%s%s:/usr/sbin:/sbin",
			 geteuid() ? "/usr/lib/rabbitmq/bin:" : "", path ? path : "/usr/bin:/bin");
		rmq.server[0] = 0;
		for (d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
			snprintf(rmq.server, sizeof rmq.server, "%s/%s", *d ? d : ".", name);
			if (access(rmq.server, X_OK) == 0)
				break;
			rmq.server[0] = 0;
		}
	}
	if (!rmq.server[0] || access(rmq.server, X_OK) != 0)
		die(EXIT_UNREACH,
		    "the RabbitMQ side: %s not found (apt-get install rabbitmq-server, "
		    "--rabbitmq-server path, or --sides mqlb,share)",
		    rmq.server[0] ? rmq.server : name);
	snprintf(rmq.ctl, sizeof rmq.ctl, "%s", rmq.server);
	slash = strrchr(rmq.ctl, '/');
	snprintf(slash + 1, sizeof rmq.ctl - (size_t)(slash + 1 - rmq.ctl), "rabbitmqctl");
}

/* Run a RabbitMQ script in the node's environment, in a process group of its
 * own (^C is ours to handle), output to the node's log dir. */
static pid_t rabbit_exec(char *const argv[], const char *log)
{
	char v[9][640];
	int fd = open_log(rmq.dir, log);
	pid_t pid = fork();

	if (pid < 0)
		die(EXIT_SYSERR, "fork: %s", strerror(errno));
	if (pid == 0) {
		int nul = open("/dev/null", O_RDONLY);

		setpgid(0, 0);
		if (nul >= 0)
			dup2(nul, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (chdir(rmq.dir) < 0)
			_exit(127);
		snprintf(v[0], sizeof v[0], "%s", rmq.dir);
		snprintf(v[1], sizeof v[1], "%s", rmq.node);
		snprintf(v[2], sizeof v[2], "%s/mnesia", rmq.dir);
		snprintf(v[3], sizeof v[3], "%s/log", rmq.dir);
		snprintf(v[4], sizeof v[4], "%s/pid", rmq.dir);
		snprintf(v[5], sizeof v[5], "%s/feature_flags", rmq.dir);
		snprintf(v[6], sizeof v[6], "%s/enabled_plugins", rmq.dir);
		snprintf(v[7], sizeof v[7], "%s/rabbitmq", rmq.dir); /* + .conf */
		/* Debian's wrapper su's to rabbitmq as root and sets HOME; run as
		 * another user, the node and rabbitmqctl share this cookie dir */
		setenv("HOME", v[0], 1);
		setenv("RABBITMQ_NODENAME", v[1], 1);
		setenv("RABBITMQ_MNESIA_BASE", v[2], 1);
		setenv("RABBITMQ_LOG_BASE", v[3], 1);
		setenv("RABBITMQ_PID_FILE", v[4], 1);
		setenv("RABBITMQ_FEATURE_FLAGS_FILE", v[5], 1);
		setenv("RABBITMQ_ENABLED_PLUGINS_FILE", v[6], 1);
		setenv("RABBITMQ_CONFIG_FILE", v[7], 1);
		/* if this node starts epmd, it listens on loopback only */
		setenv("ERL_EPMD_ADDRESS", "127.0.0.1", 1);
		execv(argv[0], argv);
		fprintf(stderr, "mqlb-bench: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(fd);
	return pid;
}

static void rabbit_child_cb(struct ev_loop *l, ev_child *w, int revents)
{
	size_t n;

	ev_child_stop(l, w);
	rmq.exited = 1;
	rmq.status = w->rstatus;
	if (!cur || strcmp(cur->mode, "rabbit"))
		return;
	n = strlen(cur->why);
	snprintf(cur->why + n, sizeof cur->why - n, "%srabbitmq-server ended", n ? "; " : "during the run: ");
	cur->child_died = 1;
}

/* Has the server process ended? It is reaped here, or by libev's SIGCHLD
 * handling (rabbit_child_cb) while a loop runs. */
static int rabbit_gone(void)
{
	int st;

	if (!rmq.exited && rmq.pid > 0 && waitpid(rmq.pid, &st, WNOHANG) == rmq.pid) {
		rmq.exited = 1;
		rmq.status = st;
	}
	return rmq.exited;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

/* rabbitmqctl stop, then the server's process group if it lingers; the
 * node's dir goes unless asked to keep it or a side failed. */
static void rabbit_stop(void)
{
	int64_t end;

	if (rmq.owner != getpid() || !rmq.pid)
		return;
	ev_child_stop(loop, &rmq.cw);
	if (!rabbit_gone()) {
		char *argv[] = { rmq.ctl, "-n", rmq.node, "stop", NULL };
		pid_t c = rabbit_exec(argv, "rabbitmqctl.log");

		for (end = now_ns() + 30 * (int64_t)1000000000; now_ns() < end; usleep(50000))
			if (reaped(c, NULL)) {
				c = 0;
				break;
			}
		if (c) {
			kill(-c, SIGKILL);
			waitpid(c, NULL, 0);
		}
		for (end = now_ns() + 15 * (int64_t)1000000000; now_ns() < end; usleep(50000))
			if (rabbit_gone())
				break;
	}
	/* what the server left (beam runs as the rabbitmq user, same group;
	 * epmd, if the node started it, is a daemon of its own and stays) */
	for (end = now_ns() + 2 * (int64_t)1000000000; now_ns() < end; usleep(50000))
		if (kill(-rmq.pid, 0) < 0 && errno == ESRCH)
			break;
	if (kill(-rmq.pid, SIGKILL) == 0)
		warnl("rabbit: node %s did not stop, killed", rmq.node);
	if (!rabbit_gone())
		waitpid(rmq.pid, NULL, 0);
	rmq.pid = 0;
	if (rmq.keep || cf.keep)
		infol("rabbit: kept %s", rmq.dir);
	else
		nftw(rmq.dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#ifdef HAVE_LIBRABBITMQ
/* A failed AMQP call, in words. */
static void rpc_why(amqp_rpc_reply_t r, const char *what, char *why, size_t whylen)
{
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL: snprintf(why, whylen, "%s: ok", what); break;
	case AMQP_RESPONSE_NONE: snprintf(why, whylen, "%s: no reply", what); break;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(why, whylen, "%s: %s", what, amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION: {
		const amqp_bytes_t *t = NULL;

		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			t = &((amqp_connection_close_t *)r.reply.decoded)->reply_text;
		else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			t = &((amqp_channel_close_t *)r.reply.decoded)->reply_text;
		snprintf(why, whylen, "%s: server closed: %.*s", what, t ? (int)t->len : 7,
			 t ? (const char *)t->bytes : "unknown");
		break;
	}
	}
}

/* An AMQP connection with channel 1 open, as guest (loopback only). */
static amqp_connection_state_t amqp_open(int port, char *why, size_t whylen)
{
	amqp_connection_state_t c = amqp_new_connection();
	amqp_socket_t *s = c ? amqp_tcp_socket_new(c) : NULL;
	amqp_rpc_reply_t r;
	int rc;

	if (!s)
		die(EXIT_SYSERR, "librabbitmq: out of memory");
	if ((rc = amqp_socket_open(s, "127.0.0.1", port)) != AMQP_STATUS_OK) {
		snprintf(why, whylen, "AMQP connect to 127.0.0.1:%d: %s", port, amqp_error_string2(rc));
		goto fail;
	}
	r = amqp_login(c, "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		rpc_why(r, "AMQP login", why, whylen);
		goto fail;
	}
	amqp_channel_open(c, 1);
	if ((r = amqp_get_rpc_reply(c)).reply_type != AMQP_RESPONSE_NORMAL) {
		rpc_why(r, "AMQP channel.open", why, whylen);
		goto fail;
	}
	return c;
fail:
	amqp_destroy_connection(c);
	return NULL;
}

static void amqp_close(amqp_connection_state_t c)
{
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
}

/* The queue the jobs go to: durable, bound to amq.topic with the MQTT
 * topic's routing key, so that nothing published is dropped. */
static int rabbit_queue(char *why, size_t whylen)
{
	amqp_connection_state_t c = amqp_open(rmq.amqp, why, whylen);
	amqp_rpc_reply_t r;

	if (!c)
		return -1;
	amqp_queue_declare(c, 1, amqp_cstring_bytes(RABBIT_QUEUE), 0, 1, 0, 0, amqp_empty_table);
	if ((r = amqp_get_rpc_reply(c)).reply_type == AMQP_RESPONSE_NORMAL) {
		amqp_queue_bind(c, 1, amqp_cstring_bytes(RABBIT_QUEUE), amqp_cstring_bytes("amq.topic"),
				amqp_cstring_bytes(RABBIT_KEY), amqp_empty_table);
		if ((r = amqp_get_rpc_reply(c)).reply_type != AMQP_RESPONSE_NORMAL)
			rpc_why(r, "queue.bind", why, whylen);
	} else {
		rpc_why(r, "queue.declare", why, whylen);
	}
	amqp_close(c);
	return r.reply_type == AMQP_RESPONSE_NORMAL ? 0 : -1;
}

/* A worker whose connection failed stops reading; its run fails. */
static void rabbit_broken(struct wsim *w, const char *why)
{
	size_t n = strlen(cur->why);

	if (!w->ac)
		return;
	ev_io_stop(loop, &w->aio);
	snprintf(cur->why + n, sizeof cur->why - n, "%sworker %d: %s", n ? "; " : "", w->idx, why);
	cur->broken = 1;
}

static void rabbit_ack(struct wsim *w, uint64_t tag)
{
	int rc;

	if (!ev_is_active(&w->aio))
		return;
	if ((rc = amqp_basic_ack(w->ac, 1, tag, 0)) != AMQP_STATUS_OK) {
		char why[128];

		snprintf(why, sizeof why, "basic.ack: %s", amqp_error_string2(rc));
		rabbit_broken(w, why);
	}
}

/* Every delivery librabbitmq has read or can read now, without blocking:
 * with prefetch = slots the broker never sends more than a free slot. */
static void rabbit_read(struct ev_loop *l, ev_io *io, int revents)
{
	struct wsim *w = io->data;

	while (ev_is_active(&w->aio)) {
		struct timeval zero = { 0, 0 };
		amqp_envelope_t env;
		amqp_rpc_reply_t r;
		uint32_t seq;
		int64_t ts;

		amqp_maybe_release_buffers(w->ac);
		r = amqp_consume_message(w->ac, &env, &zero, 0);
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
			return;
		if (r.reply_type != AMQP_RESPONSE_NORMAL) {
			char why[200];

			/* UNEXPECTED_STATE: a frame other than a delivery, which
			 * here means the channel or the connection is closing */
			rpc_why(r, "consume", why, sizeof why);
			rabbit_broken(w, why);
			return;
		}
		if (parse_job(env.message.body.bytes, env.message.body.len, &seq, &ts) < 0) {
			warnl("worker %d: a delivery that is not ours", w->idx);
			rabbit_ack(w, env.delivery_tag);
		} else {
			job_begin(w, seq, NULL)->tag = env.delivery_tag;
		}
		amqp_destroy_envelope(&env);
	}
}

/* Connect, basic.qos(prefetch = slots), basic.consume with manual acks. */
static void rabbit_worker_start(struct wsim *w)
{
	char why[200];
	amqp_rpc_reply_t r;

	if (!(w->ac = amqp_open(rmq.amqp, why, sizeof why))) {
		rabbit_broken(w, why);
		return;
	}
	ev_io_init(&w->aio, rabbit_read, amqp_get_sockfd(w->ac), EV_READ);
	w->aio.data = w;
	ev_io_start(loop, &w->aio);
	amqp_basic_qos(w->ac, 1, 0, (uint16_t)w->slots, 0);
	if ((r = amqp_get_rpc_reply(w->ac)).reply_type != AMQP_RESPONSE_NORMAL) {
		rpc_why(r, "basic.qos", why, sizeof why);
		rabbit_broken(w, why);
		return;
	}
	amqp_basic_consume(w->ac, 1, amqp_cstring_bytes(RABBIT_QUEUE), amqp_empty_bytes, 0, 0, 0,
			   amqp_empty_table);
	if ((r = amqp_get_rpc_reply(w->ac)).reply_type != AMQP_RESPONSE_NORMAL) {
		rpc_why(r, "basic.consume", why, sizeof why);
		rabbit_broken(w, why);
		return;
	}
	w->ready = 1;
	/* deliveries read along with the consume-ok wait in librabbitmq */
	rabbit_read(loop, &w->aio, EV_READ);
}

static void rabbit_worker_free(struct wsim *w)
{
	if (!w->ac)
		return;
	ev_io_stop(loop, &w->aio);
	amqp_close(w->ac);
	w->ac = NULL;
}
#else
static int rabbit_queue(char *why, size_t whylen) { return -1; }
static void rabbit_ack(struct wsim *w, uint64_t tag) {}
static void rabbit_worker_start(struct wsim *w) {}
static void rabbit_worker_free(struct wsim *w) {}
#endif

/* Three distinct free loopback ports. */
static void rabbit_ports(void)
{
	do {
		rmq.amqp = free_port();
		rmq.mqtt = free_port();
		rmq.dist = free_port();
		if (rmq.amqp < 0 || rmq.mqtt < 0 || rmq.dist < 0)
			die(EXIT_SYSERR, "no free port: %s", strerror(errno));
	} while (rmq.amqp == rmq.mqtt || rmq.amqp == rmq.dist || rmq.mqtt == rmq.dist);
}

static void rabbit_file(const char *name, const char *text, uid_t uid, gid_t gid)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", rmq.dir, name);
	if (text) {
		if (!(f = fopen(path, "w")) || fputs(text, f) < 0 || fclose(f) != 0)
			die(EXIT_SYSERR, "%s: %s", path, strerror(errno));
	} else if (mkdir(path, 0755) < 0) {
		die(EXIT_SYSERR, "%s: %s", path, strerror(errno));
	}
	if (uid != (uid_t)-1 && chown(path, uid, gid) < 0)
		die(EXIT_SYSERR, "chown %s: %s", path, strerror(errno));
}

/* The last line rabbitmq-server printed, for the error message. */
static const char *rabbit_last_words(void)
{
	static char last[200];
	char path[128], line[200];
	FILE *f;

	last[0] = 0;
	snprintf(path, sizeof path, "%s/rabbitmq-server.log", rmq.dir);
	if ((f = fopen(path, "r"))) {
		while (fgets(line, sizeof line, f)) {
			line[strcspn(line, "\n")] = 0;
			if (line[strspn(line, " \t")])
				snprintf(last, sizeof last, "%s", line + strspn(line, " \t"));
		}
		fclose(f);
	}
	return last;
}

/* Whether rabbitmq-server printed s (its log, in the node's dir, is a few
 * KiB; only its first MiB is read). */
static int rabbit_log_has(const char *s)
{
	static char buf[1 << 20];
	char path[128];
	size_t n = 0;
	FILE *f;

	snprintf(path, sizeof path, "%s/rabbitmq-server.log", rmq.dir);
	if ((f = fopen(path, "re"))) {
		n = fread(buf, 1, sizeof buf - 1, f);
		fclose(f);
	}
	buf[n] = 0;
	return strstr(buf, s) != NULL;
}

/* A private node: its own dir, free ports for AMQP, MQTT and the Erlang
 * distribution, a unique name, the MQTT plugin on. Returns 0 once it accepts
 * AMQP and MQTT and the queue is bound; -1 and why if it does not come up,
 * RABBIT_PORT_TAKEN if it exited because one of its ports was taken (its
 * dir is then removed, unless last). */
#define RABBIT_PORT_TAKEN (-2)

static int rabbit_start_once(char *why, size_t whylen, int last)
{
	char conf[512], amqp_why[200] = "";
	struct passwd *pw = NULL;
	uid_t uid = (uid_t)-1;
	gid_t gid = (gid_t)-1;
	int64_t end;
	int taken;

	snprintf(rmq.dir, sizeof rmq.dir, "/tmp/mqlb-bench-rabbit.XXXXXX");
	if (!mkdtemp(rmq.dir))
		die(EXIT_SYSERR, "mkdtemp: %s", strerror(errno));
	/* as root, Debian's rabbitmq-server runs the node as rabbitmq */
	if (geteuid() == 0) {
		if (!(pw = getpwnam("rabbitmq")))
			die(EXIT_UNREACH, "the RabbitMQ side: no user rabbitmq (is rabbitmq-server installed?)");
		uid = pw->pw_uid;
		gid = pw->pw_gid;
		if (chown(rmq.dir, uid, gid) < 0)
			die(EXIT_SYSERR, "chown %s: %s", rmq.dir, strerror(errno));
	}
	rabbit_ports();
	snprintf(rmq.node, sizeof rmq.node, "mqlb-bench-%ld@localhost", (long)getpid());
	snprintf(conf, sizeof conf,
		 "listeners.tcp.default = 127.0.0.1:%d\n"
		 "mqtt.listeners.tcp.default = 127.0.0.1:%d\n"
		 "mqtt.allow_anonymous = true\n"
		 "loopback_users = none\n"
		 "distribution.listener.port_range.min = %d\n"
		 "distribution.listener.port_range.max = %d\n",
		 rmq.amqp, rmq.mqtt, rmq.dist, rmq.dist);
	rabbit_file("mnesia", NULL, uid, gid);
	rabbit_file("log", NULL, uid, gid);
	rabbit_file("enabled_plugins", "[rabbitmq_mqtt].\n", uid, gid);
	rabbit_file("rabbitmq.conf", conf, uid, gid);
	{
		char *argv[] = { rmq.server, NULL };

		rmq.exited = 0;
		rmq.owner = getpid();
		rmq.pid = rabbit_exec(argv, "rabbitmq-server.log");
		if (!rmq.atexit_set++)
			atexit(rabbit_stop);
		ev_child_init(&rmq.cw, rabbit_child_cb, rmq.pid, 0);
		ev_child_start(loop, &rmq.cw);
	}
	infol("rabbit: starting node %s (AMQP 127.0.0.1:%d, MQTT 127.0.0.1:%d), logs in %s", rmq.node,
	      rmq.amqp, rmq.mqtt, rmq.dir);
	for (end = now_ns() + RABBIT_UP_SECS * (int64_t)1000000000; now_ns() < end; usleep(100000)) {
		ev_run(loop, EVRUN_NOWAIT); /* signals, and the server's exit */
		if (interrupted)
			die(EXIT_SYSERR, "interrupted while RabbitMQ started");
		if (rabbit_gone())
			break;
		/* its MQTT listener starts just before the AMQP one */
		if (rabbit_queue(amqp_why, sizeof amqp_why) == 0 && port_open(rmq.mqtt)) {
			infol("rabbit: node %s up", rmq.node);
			return 0;
		}
	}
	/* Its dir is kept for its logs, but not when it starts again. */
	taken = rabbit_gone() && rabbit_log_has("eaddrinuse");
	rmq.keep = last || !taken;
	if (rabbit_gone())
		snprintf(why, whylen, "%.100s %s %d before it accepted connections: \"%.100s\" (logs in %s)",
			 rmq.server, WIFSIGNALED(rmq.status) ? "was killed by signal" : "exited with status",
			 WIFSIGNALED(rmq.status) ? WTERMSIG(rmq.status) : WEXITSTATUS(rmq.status),
			 rabbit_last_words(), rmq.dir);
	else
		snprintf(why, whylen, "node %s not up after %d s%s%s (logs in %s)", rmq.node,
			 RABBIT_UP_SECS, amqp_why[0] ? ": " : "", amqp_why, rmq.dir);
	rabbit_stop();
	return taken ? RABBIT_PORT_TAKEN : -1;
}

/* A port found free can be taken before the node binds it (it starts in
 * about 10 s): the node then exits at once with eaddrinuse, and it starts
 * again on other ports, twice at most. */
static int rabbit_start(char *why, size_t whylen)
{
	for (int tries = 1;; tries++) {
		int r = rabbit_start_once(why, whylen, tries == 3);

		if (r == 0)
			return 0;
		if (tries == 3 || r != RABBIT_PORT_TAKEN)
			return -1;
		warnl("rabbit: node %s: a port was taken before it listened (eaddrinuse); "
		      "again on other ports", rmq.node);
	}
}

/* ---- publisher and control ------------------------------------------------ */

#define SYS_DROPPED "$SYS/broker/publish/messages/dropped"

static void pub_conn(struct mq *mq, int first, void *arg)
{
	/* RabbitMQ has no $SYS topics (its queue here has no length limit) */
	if (strcmp(cur->mode, "rabbit"))
		mq_subscribe(mq, NULL, SYS_DROPPED, 0, 0);
	pub_connected = 1;
}

static void pub_disc(struct mq *mq, void *arg) { pub_connected = 0; }

/* What the broker dropped (queue or inflight limits), all clients. */
static void pub_message(struct mq *mq, const struct mosquitto_message *m,
			const mosquitto_property *props, void *arg)
{
	char buf[32];
	size_t n = m->payloadlen < 31 ? (size_t)m->payloadlen : 31;

	memcpy(buf, m->payload, n);
	buf[n] = 0;
	if (!strcmp(m->topic, SYS_DROPPED))
		cur->bdropped = strtoul(buf, NULL, 10);
}

static const struct mq_cb pub_cb = { .connected = pub_conn, .disconnected = pub_disc,
				     .message = pub_message };

static void tick_cb(struct ev_loop *l, ev_timer *t, int revents)
{
	double el = (double)(now_ns() - t0) / NS;
	unsigned long target = (unsigned long)(rate * el) + 1, n = 0;

	while (published + pubfail < target && n++ < 2000)
		publish_one();
}

static void ctl_cb(struct ev_loop *l, ev_timer *t, int revents)
{
	int64_t now = now_ns();
	int i, ready = 0;

	switch (phase) {
	case P_WAIT:
		for (i = 0; i < cf.workers; i++)
			ready += ws[i].ready;
		if (cur->broken) {
			phase = P_END; /* a worker could not connect: why says */
			ev_break(loop, EVBREAK_ALL);
		} else if (ready == cf.workers && pub_connected) {
			phase = P_SETTLE;
			t_phase = now;
		} else if (now - t_phase > 20 * (int64_t)1000000000) {
			snprintf(cur->why, sizeof cur->why,
				 "%d of %d workers ready after 20 s%s", ready, cf.workers,
				 pub_connected ? "" : ", publisher not connected");
			phase = P_END;
			ev_break(loop, EVBREAK_ALL);
		}
		break;
	case P_SETTLE:
		if (now - t_phase < 500000000)
			break;
		phase = P_RUN;
		t0 = now;
		if (rate > 0)
			ev_timer_again(loop, &tick);
		else
			top_up();
		break;
	case P_RUN:
		if (now - t0 < (int64_t)(cf.duration * NS))
			break;
		ev_timer_stop(loop, &tick);
		phase = P_DRAIN;
		t_stop = t_progress = now;
		last_done = done_unique;
		break;
	case P_DRAIN:
		/* a short wait after the last done still catches duplicates and
		 * the broker's next $SYS figures. With --drain, the grace counts
		 * from the last job done: a backlog that still shrinks is waited
		 * for, up to --drain seconds after the load stopped. */
		if (done_unique != last_done) {
			last_done = done_unique;
			t_progress = now;
		}
		if ((done_unique == published && now - t_stop > 1100000000) ||
		    now - (cf.drain > 0 ? t_progress : t_stop) > (int64_t)(cf.grace * NS) ||
		    (cf.drain > 0 && now - t_stop > (int64_t)(cf.drain * NS))) {
			cur->ok = 1;
			phase = P_END;
			ev_break(loop, EVBREAK_ALL);
		}
		break;
	case P_END:
		break;
	}
}

static pid_t side_pid[NSIDES]; /* --parallel: the children running a side */

static void sig_cb(struct ev_loop *l, ev_signal *s, int revents)
{
	interrupted = 1;
	for (int i = 0; i < NSIDES; i++)
		if (side_pid[i] > 0)
			kill(side_pid[i], SIGTERM);
	ev_break(loop, EVBREAK_ALL);
}

/* ---- one mode ------------------------------------------------------------- */

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void pct(double *v, size_t n, double out[3])
{
	if (!n) {
		out[0] = out[1] = out[2] = NAN;
		return;
	}
	qsort(v, n, sizeof *v, cmp_d);
	out[0] = v[(size_t)ceil(0.50 * (double)n) - 1];
	out[1] = v[(size_t)ceil(0.99 * (double)n) - 1];
	out[2] = v[n - 1];
}

/* drop records in the pipeline's output, and "reason=n ..." */
static unsigned long count_drops(const char *dir, char *why, size_t whylen)
{
	char path[512], line[256], reason[8][32];
	unsigned long n = 0, cnt[8] = { 0 };
	int nr = 0, i;
	size_t o = 0;
	FILE *f;

	why[0] = 0;
	snprintf(path, sizeof path, "%s/records", dir);
	if (!(f = fopen(path, "r")))
		return 0;
	while (fgets(line, sizeof line, f)) {
		char rs[32];

		if (strncmp(line, "drop ", 5) != 0)
			continue;
		n++;
		if (sscanf(line, "drop %*s %31s", rs) != 1)
			continue;
		for (i = 0; i < nr && strcmp(reason[i], rs); i++)
			;
		if (i == nr && nr < 8)
			strcpy(reason[nr++], rs);
		if (i < nr)
			cnt[i]++;
	}
	fclose(f);
	for (i = 0; i < nr && o < whylen; i++)
		o += (size_t)snprintf(why + o, whylen - o, "%s%s=%lu", i ? " " : "", reason[i], cnt[i]);
	return n;
}

static void collect(struct result *r)
{
	double *s = xrealloc(NULL, (published + 1) * sizeof *s);
	double *d = xrealloc(NULL, (published + 1) * sizeof *d);
	size_t ns = 0, nd = 0, i;
	unsigned long in_time = 0;

	for (i = 0; i < published; i++) {
		struct job *j = &jobs[i];

		if (j->starts)
			s[ns++] = (double)(j->start - j->pub) / 1e6;
		if (j->dones) {
			d[nd++] = (double)(j->done - j->pub) / 1e6;
			if (j->done <= t_stop)
				in_time++;
		}
		if (j->starts > 1)
			r->dup += j->starts - 1u;
	}
	pct(s, ns, r->start);
	pct(d, nd, r->fin);
	r->slat = s;
	r->nslat = ns;
	r->lat = d;
	r->nlat = nd;
	r->published = published;
	r->pubfail = pubfail;
	r->done = done_unique;
	r->lost = published - done_unique;
	r->jobs_s = t_stop > t0 ? (double)in_time / ((double)(t_stop - t0) / NS) : 0;
	r->busy = t_stop > t0 ?
			  (double)busy_ns / ((double)(t_stop - t0) * cf.workers * cf.slots) : 0;
}

/* One side: its broker (a mosquitto of its own, or the RabbitMQ node
 * started before), the workers, the publisher, the run. */
static void run_mode(struct result *r, enum side side)
{
	char dir[64] = "/tmp/mqlb-bench.XXXXXX";
	int port, i;

	memset(r, 0, sizeof *r);
	r->mode = side_name[side];
	cur = r;
	published = done_unique = pubfail = 0;
	busy_ns = 0;
	if (capjobs)
		memset(jobs, 0, capjobs * sizeof *jobs);
	if (side == S_RABBIT) {
		/* its logs are the node's */
		snprintf(dir, sizeof dir, "%s", rmq.dir);
		port = rmq.mqtt;
	} else {
		if (!mkdtemp(dir))
			die(EXIT_SYSERR, "mkdtemp: %s", strerror(errno));
		port = broker_start(dir);
		infol("%s: broker on 127.0.0.1:%d, logs in %s", r->mode, port, dir);
	}
	if (side == S_MQLB && pipeline_start(dir, port, r->why, sizeof r->why) < 0)
		goto out;

	for (i = 0; i < cf.workers; i++) {
		struct wsim *w = &ws[i];

		memset(w, 0, sizeof *w);
		w->side = side;
		w->idx = i;
		w->slots = cf.slots;
		w->service = cf.service[i < cf.nservice ? i : cf.nservice - 1];
		snprintf(w->cid, sizeof w->cid, "w%d", i);
		if (side == S_RABBIT) {
			rabbit_worker_start(w);
		} else if (side == S_MQLB) {
			struct mqlb_worker_opts o = { 0 };
			struct mqlb_worker_cb cb = { .job = mqlb_job, .ready = mqlb_ready };

			o.host = "127.0.0.1";
			o.port = port;
			o.group = GROUP;
			o.topic = TOPIC;
			o.wid = w->cid;
			o.slots = cf.slots;
			o.ahead = cf.ahead;
			o.batch = cf.batch;
			/* a broken balancer must show, not be hidden by $share */
			o.fallback = MQLB_FALLBACK_NONE;
			if (!(w->mw = mqlb_worker_new(loop, &o, &cb, w)))
				die(EXIT_SYSERR, "mqlb_worker_new: %s", strerror(errno));
			mqlb_worker_start(w->mw);
		} else {
			w->mo.host = "127.0.0.1";
			w->mo.port = port;
			w->mo.id = w->cid;
			w->mo.clean = 1;
			w->mo.version = MQTT_PROTOCOL_V5;
			w->mo.keepalive = 10;
			w->mo.qos = 1;
			mq_init(&w->mq, loop, &w->mo, &share_cb, w);
			/* the broker sends at most `slots` unacknowledged jobs */
			mosquitto_int_option(w->mq.m, MOSQ_OPT_RECEIVE_MAXIMUM, cf.slots);
			mq_start(&w->mq);
		}
	}
	pubo.host = "127.0.0.1";
	pubo.port = port;
	pubo.id = "bench-pub";
	pubo.clean = 1;
	/* RabbitMQ's MQTT plugin (3.10) speaks 3.1.1 only */
	pubo.version = side == S_RABBIT ? MQTT_PROTOCOL_V311 : MQTT_PROTOCOL_V5;
	pubo.keepalive = 10;
	pubo.qos = 1;
	pub_connected = 0;
	mq_init(&pub, loop, &pubo, &pub_cb, NULL);
	mq_start(&pub);

	phase = P_WAIT;
	t_phase = now_ns();
	t0 = t_stop = 0;
	ev_timer_init(&ctl, ctl_cb, 0.01, 0.01);
	ev_timer_start(loop, &ctl);
	ev_init(&tick, tick_cb);
	tick.repeat = 0.001;
	ev_run(loop, 0);
	ev_timer_stop(loop, &ctl);
	ev_timer_stop(loop, &tick);
	if (!t_stop)
		t_stop = now_ns();
	collect(r);
	if (r->child_died || r->broken)
		r->ok = 0;
	if (!r->ok && !r->why[0])
		snprintf(r->why, sizeof r->why, "interrupted");
	while (tasks) {
		struct task *k = tasks;

		ev_timer_stop(loop, &k->t);
		task_unlink(k);
		free(k);
	}

	for (i = 0; i < cf.workers; i++) {
		if (side == S_MQLB) {
			mqlb_worker_free(ws[i].mw);
		} else if (side == S_RABBIT) {
			rabbit_worker_free(&ws[i]);
		} else {
			mq_disconnect(&ws[i].mq);
			mq_destroy(&ws[i].mq);
			free(ws[i].q);
		}
	}
	mq_disconnect(&pub);
	mq_destroy(&pub);
out:
	if (side == S_MQLB)
		pipeline_stop();
	kill_kids();
	if (side == S_MQLB)
		r->dropped = count_drops(dir, r->dropwhy, sizeof r->dropwhy);
	if (!r->ok)
		warnl("%s: %s (logs kept in %s)", r->mode, r->why, dir);
	if (side == S_RABBIT) {
		rmq.keep |= !r->ok; /* rabbit_stop() removes the node's dir */
	} else if (r->ok && !cf.keep) {
		/* the dir is this run's (mkdtemp): logs, sockets, the spool */
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	} else if (cf.keep) {
		infol("%s: kept %s", r->mode, dir);
	}
}

/* ---- --parallel: the other sides in children ------------------------------ */

static int xfer(int fd, void *p, size_t n, int out)
{
	char *c = p;

	while (n) {
		ssize_t k = out ? write(fd, c, n) : read(fd, c, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

/* An exit before side_collect() (die(), say) must not leave them running. */
static void kill_side(void)
{
	int i;

	for (i = 0; i < NSIDES; i++)
		if (side_pid[i] > 0)
			kill(side_pid[i], SIGTERM);
	for (i = 0; i < NSIDES; i++)
		if (side_pid[i] > 0) {
			waitpid(side_pid[i], NULL, 0);
			side_pid[i] = 0;
		}
}

/* A child runs one side and sends its result, latencies included, down a
 * pipe; the parent runs the first side meanwhile. */
static int side_fork(enum side side)
{
	static int once;
	int p[2];

	if (pipe2(p, O_CLOEXEC) < 0 || (side_pid[side] = fork()) < 0)
		die(EXIT_SYSERR, "--parallel: %s", strerror(errno));
	if (side_pid[side] == 0) {
		struct result r;

		/* its siblings are the parent's to stop */
		memset(side_pid, 0, sizeof side_pid);
		close(p[0]);
		ev_loop_fork(loop);
		run_mode(&r, side);
		if (xfer(p[1], &r, sizeof r, 1) < 0 ||
		    xfer(p[1], r.lat, r.nlat * sizeof *r.lat, 1) < 0 ||
		    xfer(p[1], r.slat, r.nslat * sizeof *r.slat, 1) < 0)
			_exit(EXIT_SYSERR);
		_exit(interrupted ? EXIT_SYSERR : EXIT_OK);
	}
	close(p[1]);
	if (!once++)
		atexit(kill_side);
	return p[0];
}

static void side_collect(enum side side, int fd, struct result *r)
{
	int st = 0, got = 0;
	pid_t w;

	if (xfer(fd, r, sizeof *r, 0) == 0) {
		r->lat = xrealloc(NULL, (r->nlat + 1) * sizeof *r->lat);
		r->slat = xrealloc(NULL, (r->nslat + 1) * sizeof *r->slat);
		got = xfer(fd, r->lat, r->nlat * sizeof *r->lat, 0) == 0 &&
		      xfer(fd, r->slat, r->nslat * sizeof *r->slat, 0) == 0;
		if (!got) {
			free(r->lat);
			free(r->slat);
		}
	}
	close(fd);
	while ((w = waitpid(side_pid[side], &st, 0)) < 0 && errno == EINTR)
		;
	side_pid[side] = 0;
	if (!got) {
		memset(r, 0, sizeof *r);
		snprintf(r->why, sizeof r->why, "the %s side's process ended without a result",
			 side_name[side]);
		if (w > 0 && WIFEXITED(st))
			snprintf(r->why + strlen(r->why), sizeof r->why - strlen(r->why),
				 " (status %d)", WEXITSTATUS(st));
		else if (w > 0 && WIFSIGNALED(st))
			snprintf(r->why + strlen(r->why), sizeof r->why - strlen(r->why),
				 " (signal %d)", WTERMSIG(st));
		warnl("%s: %s", side_name[side], r->why);
	}
	r->mode = side_name[side];
}

/* ---- output --------------------------------------------------------------- */

static double capacity(void)
{
	double c = 0;
	int i;

	for (i = 0; i < cf.workers; i++) {
		double s = cf.service[i < cf.nservice ? i : cf.nservice - 1];

		if (s <= 0)
			return INFINITY;
		c += cf.slots / s;
	}
	return c;
}

static int nsides(void) { return __builtin_popcount((unsigned)cf.modes); }

static void describe(FILE *f)
{
	int i;

	fprintf(f, "# mqlb-bench%s%s: %d workers x %d slot%s, service", cf.label ? " " : "",
		cf.label ? cf.label : "", cf.workers, cf.slots, cf.slots == 1 ? "" : "s");
	for (i = 0; i < cf.workers; i++)
		fprintf(f, "%s%g", i ? "," : " ", 1000 * cf.service[i < cf.nservice ? i : cf.nservice - 1]);
	fprintf(f, " ms, ");
	if (cf.batch > 0 || cf.ahead > 0)
		fprintf(f, "mqlb workers --batch %d --ahead %d, ", cf.batch, cf.ahead);
	if (rate > 0)
		fprintf(f, "%.0f jobs/s offered", rate);
	else
		fprintf(f, "max rate (window %ld)", cf.window);
	if (isfinite(capacity()))
		fprintf(f, " (capacity %.0f)", capacity());
	if (cf.drain > 0)
		fprintf(f, ", %g s + drain (at most %g s, until %g s without a done), QoS 1",
			cf.duration, cf.drain, cf.grace);
	else
		fprintf(f, ", %g s + %g s grace, QoS 1", cf.duration, cf.grace);
	if (cf.nagle)
		fprintf(f, ", mosquitto without set_tcp_nodelay");
	fprintf(f, "%s\n", !cf.parallel || nsides() < 2 ? ""
			   : nsides() == 2   ? ", both sides at once"
					     : ", all three sides at once");
}

static void per_worker(const struct result *r, char *buf, size_t len)
{
	size_t o = 0;
	int i;

	buf[0] = 0;
	for (i = 0; i < cf.workers && o < len; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%lu", i ? "/" : "", r->per_worker[i]);
}

static void print_table(struct result *rs, int n)
{
	char pw[512];
	int i;

	describe(stdout);
	printf("%-6s %9s  %-24s %-24s %9s %9s %7s %5s %6s %7s  %s\n", "mode", "jobs/s",
	       "start ms p50/p99/max", "done ms p50/p99/max", "published", "done", "lost", "dup",
	       "drop", "brkdrop", "jobs per worker");
	for (i = 0; i < n; i++) {
		struct result *r = &rs[i];
		char a[64], b[64], d[32], bd[32];

		if (!r->ok && !r->published) {
			printf("%-6s failed: %s\n", r->mode, r->why);
			continue;
		}
		snprintf(a, sizeof a, "%.2f/%.2f/%.2f", r->start[0], r->start[1], r->start[2]);
		snprintf(b, sizeof b, "%.2f/%.2f/%.2f", r->fin[0], r->fin[1], r->fin[2]);
		per_worker(r, pw, sizeof pw);
		snprintf(d, sizeof d, "%lu", r->dropped);
		snprintf(bd, sizeof bd, "%lu", r->bdropped);
		printf("%-6s %9.1f  %-24s %-24s %9lu %9lu %7lu %5lu %6s %7s  %s%s%s\n", r->mode,
		       r->jobs_s, a, b, r->published, r->done, r->lost, r->dup,
		       strcmp(r->mode, "mqlb") ? "-" : d, strcmp(r->mode, "rabbit") ? bd : "-", pw,
		       r->ok ? "" : "  FAILED: ", r->ok ? "" : r->why);
	}
	for (i = 0; i < n; i++)
		if (rs[i].dropwhy[0])
			printf("# %s drop records: %s\n", rs[i].mode, rs[i].dropwhy);
	for (i = 0; i < n; i++)
		if (rs[i].ok)
			printf("# %s: worker slots busy %.1f%% of the time while publishing\n",
			       rs[i].mode, 100 * rs[i].busy);
	/* mqlb is always the first side when it runs */
	for (i = 1; i < n && !strcmp(rs[0].mode, "mqlb"); i++)
		if (rs[0].ok && rs[i].ok && rs[i].jobs_s > 0)
			printf("# mqlb vs %s: jobs/s x%.2f; added latency to done p50 %+.2f ms, p99 %+.2f ms;"
			       " to start p50 %+.2f ms, p99 %+.2f ms\n",
			       rs[i].mode, rs[0].jobs_s / rs[i].jobs_s, rs[0].fin[0] - rs[i].fin[0],
			       rs[0].fin[1] - rs[i].fin[1], rs[0].start[0] - rs[i].start[0],
			       rs[0].start[1] - rs[i].start[1]);
	fflush(stdout);
}

static void print_csv(struct result *rs, int n)
{
	char pw[512];
	int i;

	printf("label,mode,ok,workers,slots,offered_jobs_s,duration_s,published,done,lost,dup,dropped,"
	       "broker_dropped,"
	       "jobs_s,start_p50_ms,start_p99_ms,start_max_ms,done_p50_ms,done_p99_ms,done_max_ms,"
	       "jobs_per_worker\n");
	for (i = 0; i < n; i++) {
		struct result *r = &rs[i];

		per_worker(r, pw, sizeof pw);
		printf("%s,%s,%d,%d,%d,%.1f,%g,%lu,%lu,%lu,%lu,%lu,%lu,%.1f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,"
		       "%s\n",
		       cf.label ? cf.label : "", r->mode, r->ok, cf.workers, cf.slots, rate, cf.duration,
		       r->published, r->done, r->lost, r->dup, r->dropped, r->bdropped, r->jobs_s, r->start[0],
		       r->start[1], r->start[2], r->fin[0], r->fin[1], r->fin[2], pw);
	}
	fflush(stdout);
}

/* A CDF as a gnuplot datablock, at most ~2000 points, as a fraction of all
 * published jobs: lost jobs keep a curve below 1. */
static void datablock(FILE *g, const char *name, const double *v, size_t n, unsigned long all)
{
	size_t step = n / 2000 + 1, i;

	fprintf(g, "$%s << EOD\n", name);
	for (i = 0; i < n; i += step)
		fprintf(g, "%.4f %.6f\n", v[i] > 0.001 ? v[i] : 0.001, (double)(i + 1) / (double)all);
	if (n)
		fprintf(g, "%.4f %.6f\n", v[n - 1], (double)n / (double)all);
	fprintf(g, "EOD\n");
}

static void plot(struct result *rs, int n)
{
	const char *sep = "";
	FILE *g;
	int i;

	if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
		warnl("--plot: gnuplot not found (apt-get install gnuplot-nox); no plot");
		return;
	}
	if (!(g = popen("gnuplot", "w")))
		die(EXIT_SYSERR, "gnuplot: %s", strerror(errno));
	fprintf(g, "set terminal png size 900,560\nset output '%s'\n", cf.plot);
	fprintf(g, "set title 'mqlb-bench%s%s: latency CDF' noenhanced\n", cf.label ? " " : "",
		cf.label ? cf.label : "");
	fprintf(g, "set logscale x\nset xlabel 'latency after publish, ms'\nset ylabel 'fraction of published jobs'\n"
		   "set key top left\nset grid\nset yrange [0:1]\n");
	for (i = 0; i < n; i++) {
		char nm[32];

		snprintf(nm, sizeof nm, "%s_done", rs[i].mode);
		datablock(g, nm, rs[i].lat, rs[i].nlat, rs[i].published);
		snprintf(nm, sizeof nm, "%s_start", rs[i].mode);
		datablock(g, nm, rs[i].slat, rs[i].nslat, rs[i].published);
	}
	fprintf(g, "plot ");
	for (i = 0; i < n; i++) {
		if (!rs[i].nlat)
			continue;
		fprintf(g, "%s$%s_done with lines lw 2 lc %d title '%s: done', "
			   "$%s_start with lines lw 1 lc %d title '%s: start'",
			sep, rs[i].mode, i + 1, rs[i].mode, rs[i].mode, i + 1, rs[i].mode);
		sep = ", ";
	}
	if (!*sep)
		fprintf(g, "NaN notitle");
	fprintf(g, "\n");
	if (pclose(g) != 0)
		warnl("--plot: gnuplot failed");
}

/* ---- options and main ----------------------------------------------------- */

enum {
	O_SCENARIO = 2000, O_SMOKE, O_MQLB, O_SHARE, O_WORKERS, O_SLOTS, O_SERVICE, O_RATE,
	O_LOAD, O_MAX, O_DURATION, O_GRACE, O_DRAIN, O_WINDOW, O_SIZE, O_BINDIR, O_BROKER, O_CSV,
	O_PLOT, O_KEEP, O_LABEL, O_PARALLEL, O_SERIAL, O_SIDES, O_RABBIT, O_RABBITMQ_SERVER,
	O_AHEAD, O_BATCH, O_NAGLE,
};

static const struct option longopts[] = {
	{ "scenario", required_argument, NULL, O_SCENARIO },
	{ "smoke", no_argument, NULL, O_SMOKE },
	{ "mqlb", no_argument, NULL, O_MQLB },
	{ "share", no_argument, NULL, O_SHARE },
	{ "rabbit", no_argument, NULL, O_RABBIT },
	{ "sides", required_argument, NULL, O_SIDES },
	{ "rabbitmq-server", required_argument, NULL, O_RABBITMQ_SERVER },
	{ "workers", required_argument, NULL, O_WORKERS },
	{ "slots", required_argument, NULL, O_SLOTS },
	{ "ahead", required_argument, NULL, O_AHEAD },
	{ "batch", required_argument, NULL, O_BATCH },
	{ "service", required_argument, NULL, O_SERVICE },
	{ "rate", required_argument, NULL, O_RATE },
	{ "load", required_argument, NULL, O_LOAD },
	{ "max", no_argument, NULL, O_MAX },
	{ "duration", required_argument, NULL, O_DURATION },
	{ "grace", required_argument, NULL, O_GRACE },
	{ "drain", required_argument, NULL, O_DRAIN },
	{ "window", required_argument, NULL, O_WINDOW },
	{ "size", required_argument, NULL, O_SIZE },
	{ "bindir", required_argument, NULL, O_BINDIR },
	{ "broker", required_argument, NULL, O_BROKER },
	{ "csv", no_argument, NULL, O_CSV },
	{ "plot", required_argument, NULL, O_PLOT },
	{ "keep", no_argument, NULL, O_KEEP },
	{ "label", required_argument, NULL, O_LABEL },
	{ "parallel", no_argument, NULL, O_PARALLEL },
	{ "serial", no_argument, NULL, O_SERIAL },
	{ "nagle", no_argument, NULL, O_NAGLE },
	{ NULL, 0, NULL, 0 },
};

/* The four scenarios of contrib/bench/README. */
static void scenario(int n)
{
	static const char *labels[] = { NULL, "1-uneven", "2-throughput", "3-latency", "4-overload" };

	cf.scenario = n;
	cf.label = labels[n];
	cf.workers = 4;
	cf.nservice = 1;
	cf.rate = cf.load = 0;
	/* Light loads, long runs: both sides at once (README). Scenarios 2
	 * and 3 measure CPU cost and added latency, so each side runs alone. */
	cf.parallel = n == 1 || n == 4;
	switch (n) {
	case 1: /* uneven workers at 70% of capacity */
		cf.slots = 1;
		cf.service[0] = cf.service[1] = cf.service[2] = 0.005;
		cf.service[3] = 0.050;
		cf.nservice = 4;
		cf.load = 0.7;
		cf.duration = 30;
		break;
	case 2: /* trivial jobs as fast as possible */
		cf.slots = 8;
		cf.service[0] = 0;
		cf.duration = 10;
		break;
	case 3: /* what the balancer adds, with idle workers */
		cf.slots = 1;
		cf.service[0] = 0;
		cf.rate = 100;
		cf.duration = 15;
		break;
	case 4: /* twice the capacity: what gets lost or doubled */
		cf.slots = 1;
		cf.service[0] = 0.010;
		cf.load = 2;
		cf.duration = 60;
		/* "every message is processed once the load falls" */
		cf.drain = 120;
		break;
	}
}

/* --sides mqlb,share,rabbit: which, in this order whatever the list's. */
static void sides(const char *arg)
{
	char buf[64], *save = NULL, *tok;
	int i;

	if (strlen(arg) >= sizeof buf)
		opt_usage_error("--sides: list too long");
	strcpy(buf, arg);
	cf.modes = 0;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		for (i = 0; i < NSIDES && strcmp(tok, side_name[i]); i++)
			;
		if (i == NSIDES)
			opt_usage_error("--sides: bad side \"%s\" (mqlb, share or rabbit)", tok);
		cf.modes |= 1 << i;
	}
	if (!cf.modes)
		opt_usage_error("--sides: empty list");
}

static void opt(int c, const char *arg)
{
	switch (c) {
	case O_SCENARIO: scenario((int)opt_long("--scenario", arg, 1, 4)); break;
	case O_SMOKE: cf.smoke = 1; break;
	case O_MQLB: cf.modes = 1 << S_MQLB; break;
	case O_SHARE: cf.modes = 1 << S_SHARE; break;
	case O_RABBIT: cf.modes = 1 << S_RABBIT; break;
	case O_SIDES: sides(arg); break;
	case O_RABBITMQ_SERVER: cf.rabbitmq_server = arg; break;
	case O_WORKERS: cf.workers = (int)opt_long("--workers", arg, 1, MAXW); break;
	case O_SLOTS: cf.slots = (int)opt_long("--slots", arg, 1, 1000); break;
	case O_NAGLE: cf.nagle = 1; break;
	case O_AHEAD: cf.ahead = (int)opt_long("--ahead", arg, 0, 1000); break;
	case O_BATCH: cf.batch = (int)opt_long("--batch", arg, 0, 65535); break;
	case O_SERVICE: {
		char buf[512], *save = NULL, *tok;

		if (strlen(arg) >= sizeof buf)
			opt_usage_error("--service: list too long");
		strcpy(buf, arg);
		cf.nservice = 0;
		for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			if (cf.nservice == MAXW)
				opt_usage_error("--service: at most %d values", MAXW);
			cf.service[cf.nservice++] = opt_secs("--service", tok, 0, 60);
		}
		if (!cf.nservice)
			opt_usage_error("--service: empty list");
		break;
	}
	case O_RATE:
		cf.rate = (double)opt_long("--rate", arg, 1, 10000000);
		cf.load = 0;
		break;
	case O_LOAD: {
		char *end;

		errno = 0;
		cf.load = strtod(arg, &end);
		if (errno || end == arg || *end || !(cf.load > 0 && cf.load <= 100))
			opt_usage_error("--load: bad fraction \"%s\" (0 to 100, 0.7 is 70%%)", arg);
		cf.rate = 0;
		break;
	}
	case O_MAX: cf.rate = cf.load = 0; break;
	case O_DURATION: cf.duration = opt_secs("--duration", arg, 0.1, 86400); break;
	case O_GRACE: cf.grace = opt_secs("--grace", arg, 0, 3600); break;
	case O_DRAIN: cf.drain = opt_secs("--drain", arg, 0, 3600); break;
	case O_WINDOW: cf.window = opt_long("--window", arg, 1, 1000000); break;
	case O_SIZE: cf.size = opt_long("--size", arg, 0, 10000000); break;
	case O_BINDIR: cf.bindir = arg; break;
	case O_BROKER: cf.broker = arg; break;
	case O_CSV: cf.csv = 1; break;
	case O_PLOT: cf.plot = arg; break;
	case O_KEEP: cf.keep = 1; break;
	case O_LABEL: cf.label = arg; break;
	case O_PARALLEL: cf.parallel = 1; break;
	case O_SERIAL: cf.parallel = 0; break;
	}
}

int main(int argc, char **argv)
{
	struct conf c = { 0 };
	struct result rs[NSIDES];
	int i, n = 0, fds[NSIDES], first = -1;

	memset(rs, 0, sizeof rs);
	if (opt_parse(&argc, &argv, 0, NULL, longopts, opt, usage, &c) != argc)
		opt_usage_error("no operands expected");
	if ((cf.modes & 1 << S_RABBIT) && !(ALL_SIDES & 1 << S_RABBIT))
		die(EXIT_UNREACH, "the RabbitMQ side: this mqlb-bench was built without librabbitmq "
				  "(install librabbitmq-dev and run configure again)");
	if (cf.load > 0) {
		if (!isfinite(capacity()))
			opt_usage_error("--load needs service times above 0 (use --rate)");
		cf.rate = cf.load * capacity();
	}
	if (cf.smoke) {
		/* CI checks that it runs: a few seconds a side, no figures */
		cf.duration = cf.duration < 2 ? cf.duration : 2;
		cf.grace = cf.grace < 1 ? cf.grace : 1;
		cf.drain = 0;
		if (cf.rate <= 0 || cf.rate > 200)
			cf.rate = 200;
	}
	/* Trivial jobs at the highest rate: the case batches are for. */
	if (cf.batch < 0)
		cf.batch = cf.scenario == 2 ? cf.slots : 0;
	rate = cf.rate;
	payload_len = (size_t)cf.size;
	payload = xrealloc(NULL, payload_len + 64);

	signal(SIGPIPE, SIG_IGN);
	/* An inherited SIG_IGN would have the kernel reap our children. */
	signal(SIGCHLD, SIG_DFL);
	atexit(kill_kids);
	loop = EV_DEFAULT;
	ev_signal_init(&sigint_w, sig_cb, SIGINT);
	ev_signal_init(&sigterm_w, sig_cb, SIGTERM);
	ev_signal_start(loop, &sigint_w);
	ev_signal_start(loop, &sigterm_w);
	ev_unref(loop);
	ev_unref(loop);

	if (cf.modes & 1 << S_RABBIT)
		rabbit_find(); /* before a run that would need it */
	if (log_level() >= L_INFO)
		describe(stderr);
	if (cf.parallel && nsides() > 1) {
		/* the node is up before any side starts measuring */
		if ((cf.modes & 1 << S_RABBIT) && rabbit_start(rs[0].why, sizeof rs[0].why) < 0)
			die(EXIT_UNREACH, "the RabbitMQ side: %s", rs[0].why);
		for (i = 0; i < NSIDES; i++) {
			if (!(cf.modes & 1 << i))
				continue;
			if (first < 0)
				first = i;
			else
				fds[i] = side_fork(i);
		}
		run_mode(&rs[n++], first);
		for (i = first + 1; i < NSIDES; i++)
			if (cf.modes & 1 << i)
				side_collect(i, fds[i], &rs[n++]);
	} else {
		for (i = 0; i < NSIDES && !interrupted; i++) {
			if (!(cf.modes & 1 << i))
				continue;
			/* alone: no idle node beside the other sides */
			if (i == S_RABBIT && rabbit_start(rs[n].why, sizeof rs[n].why) < 0) {
				warnl("rabbit: %s", rs[n].why);
				rs[n++].mode = side_name[i];
				continue;
			}
			run_mode(&rs[n++], i);
		}
	}
	for (i = 0; i < n; i++)
		if (!strcmp(rs[i].mode, "rabbit") && !rs[i].ok)
			rmq.keep = 1;
	rabbit_stop();
	if (cf.csv)
		print_csv(rs, n);
	else
		print_table(rs, n);
	if (cf.plot)
		plot(rs, n);
	for (i = 0; i < n; i++) {
		free(rs[i].lat);
		free(rs[i].slat);
	}
	if (interrupted)
		return EXIT_SYSERR;
	for (i = 0; i < n; i++)
		if (!rs[i].ok)
			return EXIT_UNREACH;
	return EXIT_OK;
}
