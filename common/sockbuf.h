/* SPDX-License-Identifier: MIT */
/* sockbuf.h: reads and writes of the broker sockets buffered in user space,
 * under libmosquitto, which reads a packet in three read(2)s and writes each
 * packet (and a wake-up byte nobody reads) at once. */
#ifndef MQLB_SOCKBUF_H
#define MQLB_SOCKBUF_H

#include <stddef.h>

/* Whether libmosquitto's read(2) and write(2) come here: in a program linked
 * with libcommon, not inside libmqlb (whose copy is hidden). When not, the
 * calls below do nothing and libmosquitto works on the socket as ever. */
int sb_active(void);
/* Buffer fd from now until it is closed: reads are served from one read of
 * up to 16 KiB, writes wait for sb_flush(). */
void sb_attach(int fd);
/* While held, what is written waits; closing fd then discards it. */
void sb_hold(int fd, int on);
/* Send what waits, unless held, as far as the socket takes it: 0, or -1
 * with errno when the connection failed (what waited is dropped; the next
 * read says why). */
int sb_flush(int fd);
/* Bytes handed to the kernel so far (0 for a socket not buffered). */
unsigned long sb_sent(int fd);
/* Bytes read from the socket that nobody has taken yet. */
size_t sb_unread(int fd);
/* The poller says fd is readable: its next read asks the kernel again. Until
 * then, once a read has emptied the socket, reads say EAGAIN with no system
 * call (level-triggered readiness says when to come back). */
void sb_readable(int fd);
/* Whether a read now would say EAGAIN for that reason (nothing unread). */
int sb_dry(int fd);
/* Whether written bytes wait for the socket to take them (EV_WRITE). */
int sb_blocked(int fd);
/* Bytes written to fd that the kernel does not have yet (held or blocked). */
size_t sb_unsent(int fd);
/* Sockets libmosquitto makes while on (its wake-up pair): writes to them
 * are dropped, as nothing here reads them. */
void sb_capture_wakeup(int on);

#endif
