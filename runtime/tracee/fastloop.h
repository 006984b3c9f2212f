/* The native stop loop's shared parts: fastloop.c (the loop: waits, thread states, forks, exits,
 * execs, the event queue, tracee memory), fastpath.c (path stops), fastport.c (socket stops).
 * See fastloop.c for what it does and runtime/tracee/native.py for how Python drives it. */
#ifndef CARRYON_FASTLOOP_H
#define CARRYON_FASTLOOP_H

#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define HIDDEN __attribute__((visibility("hidden")))   /* shared between the files, not exported */

/* x86_64 struct user_regs_struct, as words (checked against <sys/user.h> in fastloop.c; the
 * Python side, runtime/tracee/ffi.py and native.py, by tests/test_engine_abi.py) */
#define NREGS 27
#define R_R10 7
#define R_R9 8
#define R_R8 9
#define R_RAX 10
#define R_RDX 12
#define R_RSI 13
#define R_RDI 14
#define R_ORIG_RAX 15
#define R_RSP 19
#define MAXNR 512
#define PATH_LIMIT 4096
#define RED_ZONE 128

/* queued events (cf_events): 4 ints each */
#define Q_EXIT 1        /* pid, wait status */
#define Q_FORK 2        /* parent, child, child's state bits */
#define Q_VFORK 3       /* parent, child, child's state bits (kcmp said: same memory) */
#define Q_EXEC 4        /* pid, its new state bits: its execve succeeded */
#define Q_BOUND 5       /* tid, fd: a bind translated here (Python remembers the socket) */
#define QUEUE_MAX 1024

/* what cf_stats counts */
enum { C_CACHED, C_NAMES, C_SIGNALS, C_FORKS, C_EXITS, C_EXECS, C_SOCKETS, C_PYTHON, C_LOADS,
       C_COUNT };

extern HIDDEN unsigned long *regs;      /* Python's register buffer (NREGS words) */
extern HIDDEN unsigned long counts[C_COUNT];
extern HIDDEN unsigned queued;

HIDDEN void enqueue(int kind, int a, int b, int c);
HIDDEN int read_mem(int pid, unsigned long addr, void *buf, size_t n);
HIDDEN int write_mem(int pid, unsigned long addr, const void *buf, size_t n);
HIDDEN unsigned long push(int pid, const void *data, size_t n);
HIDDEN int set_reg(int pid, int reg, unsigned long value);
HIDDEN int resume(int pid, int counter);

/* a seccomp stop of a settled thread, registers in `regs`: 1 handled (resumed), 0 for Python,
 * -1 not a call of that file's */
HIDDEN int path_stop(int pid, unsigned long nr);
HIDDEN int port_stop(int pid, unsigned long nr);
HIDDEN int path_init(void);
HIDDEN void path_reset(void);
HIDDEN void port_reset(void);

#endif
