/* carryon's native stop loop: the stops whose handling is known in advance, without Python.
 *
 * The tracer's event loop (runtime/tracee/loop.py) calls cf_wait() instead of waitpid(). cf_wait()
 * waits for stops and handles by itself, for the threads Python marked "settled" (cf_set), the stops
 * whose answer needs no decision:
 *   - a seccomp stop of a one-path call (cf_spec) whose path is absolute and found in the path cache
 *     (cf_put: guest path -> host path, filled and emptied by Python): the host path is written below
 *     the stack pointer (past the red zone) and the register pointed at it;
 *   - a seccomp stop of such a call whose path is one plain name (relative, no '/', not one of the
 *     names Python must see, cf_names) that is not a symlink to follow: nothing to change;
 *   - a NULL or empty path (the fd itself, or the kernel's EFAULT/ENOENT): nothing to change;
 *   - a signal-delivery stop (not a stop signal): the signal is delivered (a stop signal's, and
 *     the group-stop it starts, are Python's: it keeps them, PTRACE_LISTEN, for job control);
 *   - for threads Python marked "forks" too: a fork or vfork event (not a thread, not CLONE_VM
 *     except vfork's): the parent goes on, the child's first stop (the attach stop) is resumed
 *     here, and the event is queued for Python (cf_events) with what it needs to know then;
 *   - the end of a process other than the main one (and the ST_OWN_END ones): queued for Python;
 *   - the first stop of a thread after an execve Python let go on without an exec event (cf_probe):
 *     when the old memory is gone (the exec succeeded), that is queued and the stop is handled
 *     like any other of a settled thread;
 *   - the first call of carryon's loader after an exec through it (LOADER_CALL, runtime/execve/
 *     loader.py): the record Python made at the execve stop (cf_load) is written into the
 *     loader's buffer and the call turned into the openat of the program's host path it holds;
 *   - with port translation (cf_port_*), the socket calls whose answer the port table gives as is:
 *     a bind to a mapped port already published for that address (queued: Python remembers the
 *     socket), a connect/sendto to a mapped port on a local address, getsockname/getpeername of a
 *     socket on a mapped host port (answered from a pidfd_getfd copy), and the calls with nothing
 *     to translate. The rules are runtime/extension/portmap.py's; whatever else comes up (AF_UNIX,
 *     a first bind, a restricted publication, a bound client...) goes to Python.
 * Every other stop (and any doubt: a read or write that fails, a miss, a full queue) goes back to
 * Python with its pid and wait status, and the registers already fetched when it was a seccomp
 * stop. Python drains the queue before it handles anything else, so it sees events in order. The
 * rules are Python's own fast paths (runtime/syscall/enter.py, runtime/tracee/loop.py); the cache
 * holds only what Python's caches would answer the same way (see runtime/tracee/native.py).
 *
 * This file is the loop itself and the threads' states; fastpath.c answers path stops, fastport.c
 * socket stops. Plain C, libc only; built by runtime/tracee/native.py (`build`) into _fastloop.so.
 */
#include "fastloop.h"
#include <stddef.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <time.h>

/* fastloop.h's register indices are the kernel's layout (Python's side: tests/test_engine_abi.py) */
#define AT_WORD(field, index) (offsetof(struct user_regs_struct, field) == (index) * sizeof(long))
_Static_assert(sizeof(struct user_regs_struct) == NREGS * sizeof(long), "NREGS");
_Static_assert(AT_WORD(r10, R_R10) && AT_WORD(r9, R_R9) && AT_WORD(r8, R_R8) && AT_WORD(rax, R_RAX) && AT_WORD(rdx, R_RDX)
               && AT_WORD(rsi, R_RSI) && AT_WORD(rdi, R_RDI) && AT_WORD(orig_rax, R_ORIG_RAX)
               && AT_WORD(rsp, R_RSP), "register indices");

#ifndef sigev_notify_thread_id                  /* glibc before 2.35 */
#define sigev_notify_thread_id _sigev_un._tid
#endif

#define CF_ABI 6
#define PID_LIMIT (1u << 22)            /* the kernel's PID_MAX_LIMIT on 64-bit */
#define SECCOMP_STOP (SIGTRAP | (7 << 8))   /* PTRACE_EVENT_SECCOMP */
#define SYSCALL_STOP (SIGTRAP | 0x80)
#define EVENT_FORK 1
#define EVENT_VFORK 2
#define EVENT_STOP 128
#define NR_CLONE 56
#define NR_FORK 57
#define CLONE_VM_ 0x100
#define SYS_KCMP_ 312
#define KCMP_VM_ 1
#define LOADER_CALL 184             /* runtime/execve/loader.py NR */
#define SYS_OPENAT_ 257
#define O_RDONLY_CLOEXEC_ 02000000

/* per-pid state: bits Python sets (cf_set) ... */
#define ST_SETTLED 1    /* its stops may be handled here */
#define ST_FORKS 2      /* its fork/vfork events too */
#define ST_HELD 4       /* Python holds it (stopped before its parent's fork event) */
#define ST_OWN_END 32   /* its end goes to Python at once (emulated ptrace: a wait may hang on it) */
/* ... and the bit this loop owns */
#define ST_INITIAL 8    /* its attach stop is still to come: resume it */
#define ST_PROBE 16     /* its next stop tells whether its execve succeeded (see probes) */
#define ST_PYTHON (ST_SETTLED | ST_FORKS | ST_HELD | ST_OWN_END)

HIDDEN unsigned long *regs;
HIDDEN unsigned long counts[C_COUNT];
HIDDEN unsigned queued;
static uint8_t *state;                  /* per pid, see ST_* */
static int main_pid;
static int queue[QUEUE_MAX * 4];

/* threads whose execve is in flight (ST_PROBE): how to tell, at their next stop, whether it
   succeeded (Python's Loop._exec_check), and their state bits if it did */
struct probe { int pid, peer, fd, after; unsigned long addr; };
#define PROBES 256
static struct probe probes[PROBES];

static unsigned get_state(int pid)
{
    return pid > 0 && (unsigned)pid < PID_LIMIT ? state[pid] : 0;
}

static void put_state(int pid, unsigned v)
{
    if (pid > 0 && (unsigned)pid < PID_LIMIT)
        state[pid] = (uint8_t)v;
}

int cf_abi(void) { return CF_ABI; }

static int used_once;                   /* cf_init ran before: cf_reset first */
void cf_reset(void);

int cf_init(unsigned long *regs_buf)
{
    if (used_once)
        cf_reset();
    used_once = 1;
    regs = regs_buf;
    if (!state)
        state = calloc(PID_LIMIT, 1);   /* untouched pages cost nothing */
    return state && !path_init() ? 0 : -ENOMEM;
}

/* Python's bits for a thread (ST_SETTLED, ST_FORKS, ST_HELD, ST_OWN_END); this loop's own are kept. */
void cf_set(int pid, int bits)
{
    put_state(pid, (get_state(pid) & ~ST_PYTHON) | ((unsigned)bits & ST_PYTHON));
}

void cf_main(int pid) { main_pid = pid; }

/* At the next stop of pid: kcmp(KCMP_VM) with peer (a vfork parent) when peer > 0, else a read of
 * the old memory's addr through fd (its /proc/PID/mem) tells whether the execve succeeded; then
 * the thread gets the state bits `after`. Returns -1 when the table is full (Python checks). */
int cf_probe(int pid, int peer, int fd, unsigned long addr, int after)
{
    for (int i = 0; i < PROBES; i++) {
        if (probes[i].pid == 0 || probes[i].pid == pid) {
            probes[i] = (struct probe){ pid, peer, fd, after & ST_PYTHON, addr };
            put_state(pid, ST_PROBE);
            return 0;
        }
    }
    return -1;
}

/* records for carryon's loader (cf_load): pid -> the bytes its LOADER_CALL gets */
struct load { int pid; unsigned len; char *rec; };
#define LOAD_SLOTS 64
#define LOAD_MAX 16384
static struct load loads[LOAD_SLOTS];
static unsigned nloads;

static struct load *find_load(int pid)
{
    for (int i = 0; i < LOAD_SLOTS; i++)
        if (loads[i].pid == pid && loads[i].rec)
            return &loads[i];
    return NULL;
}

static void drop_load(struct load *l)
{
    free(l->rec);
    l->rec = NULL;
    l->pid = 0;
    nloads--;
}

/* pid's next LOADER_CALL gets `rec` (len bytes; len 0: none). Returns -1 when there is no room
 * (Python answers that call then: it keeps its own copy). */
int cf_load(int pid, const char *rec, unsigned len)
{
    struct load *l = nloads ? find_load(pid) : NULL;
    if (l)
        drop_load(l);
    if (!len)
        return 0;
    if (len > LOAD_MAX || len < 40)
        return -1;
    for (int i = 0; i < LOAD_SLOTS; i++) {
        if (!loads[i].rec) {
            char *copy = malloc(len);
            if (!copy)
                return -1;
            memcpy(copy, rec, len);
            loads[i] = (struct load){ pid, len, copy };
            nloads++;
            return 0;
        }
    }
    return -1;
}

/* A LOADER_CALL(buffer, size) stop, registers in `regs`: 1 answered, 0 for Python. */
static int load_stop(int pid)
{
    struct load *l = nloads ? find_load(pid) : NULL;
    if (!l || regs[R_RSI] < l->len)
        return 0;
    unsigned long buf = regs[R_RDI];
    uint32_t path_off;
    memcpy(&path_off, l->rec + 32, sizeof path_off);    /* the record's offset of the host path */
    if (path_off >= l->len || write_mem(pid, buf, l->rec, l->len))
        return 0;
    unsigned long saved[NREGS];
    memcpy(saved, regs, sizeof saved);
    regs[R_ORIG_RAX] = SYS_OPENAT_;
    regs[R_RDI] = (unsigned long)-100;                  /* AT_FDCWD */
    regs[R_RSI] = buf + path_off;
    regs[R_RDX] = O_RDONLY_CLOEXEC_;
    regs[R_R10] = 0;
    if (ptrace(PTRACE_SETREGS, pid, 0, regs) == -1) {
        memcpy(regs, saved, sizeof saved);
        return 0;
    }
    drop_load(l);
    return resume(pid, C_LOADS);
}

static void drop_probe(int pid)
{
    for (int i = 0; i < PROBES; i++)
        if (probes[i].pid == pid)
            probes[i].pid = 0;
}

/* The thread's execve (see cf_probe): 1 when it succeeded (queued; the thread has its new state
 * bits), 0 when Python must tell (the same program goes on, or no probe known). */
static int exec_probe(int pid)
{
    struct probe *p = NULL;
    for (int i = 0; i < PROBES; i++) {
        if (probes[i].pid == pid) {
            p = &probes[i];
            break;
        }
    }
    put_state(pid, 0);
    if (!p)
        return 0;
    struct probe pr = *p;
    p->pid = 0;
    long same = pr.peer > 0 ? syscall(SYS_KCMP_, pid, pr.peer, KCMP_VM_, 0, 0) : -1;
    int alive;
    if (same >= 0) {
        alive = same == 0;                      /* still on its vfork parent's memory */
    } else if (pr.fd >= 0) {
        char c;
        alive = pread(pr.fd, &c, 1, (off_t)pr.addr) == 1;
    } else {
        alive = 0;
    }
    if (alive || queued >= QUEUE_MAX)
        return 0;
    enqueue(Q_EXEC, pid, pr.after, 0);
    put_state(pid, (unsigned)pr.after);
    counts[C_EXECS]++;
    return 1;
}

void cf_stats(unsigned long *out)
{
    memcpy(out, counts, sizeof counts);
}

/* Queued events into out (4 ints each, at most max events); returns how many. */
int cf_events(int *out, int max)
{
    unsigned n = queued < (unsigned)max ? queued : (unsigned)max;
    memcpy(out, queue, n * 4 * sizeof *queue);
    memmove(queue, queue + n * 4, (queued - n) * 4 * sizeof *queue);
    queued -= n;
    return (int)n;
}

HIDDEN void enqueue(int kind, int a, int b, int c)
{
    int *q = queue + queued++ * 4;
    q[0] = kind;
    q[1] = a;
    q[2] = b;
    q[3] = c;
}

HIDDEN int read_mem(int pid, unsigned long addr, void *buf, size_t n)
{
    struct iovec local = { buf, n }, remote = { (void *)addr, n };
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)n ? 0 : -1;
}

HIDDEN int write_mem(int pid, unsigned long addr, const void *buf, size_t n)
{
    struct iovec local = { (void *)buf, n }, remote = { (void *)addr, n };
    return process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)n ? 0 : -1;
}

/* push n bytes below the red zone; the address, or 0 */
HIDDEN unsigned long push(int pid, const void *data, size_t n)
{
    unsigned long at = (regs[R_RSP] - RED_ZONE - n) & ~15ul;
    return write_mem(pid, at, data, n) ? 0 : at;
}

/* Set one register in the tracee; on failure (the tracee is gone) the buffer is left as Python
 * must see it. */
HIDDEN int set_reg(int pid, int reg, unsigned long value)
{
    unsigned long old = regs[reg];
    regs[reg] = value;
    if (ptrace(PTRACE_SETREGS, pid, 0, regs) == -1) {
        regs[reg] = old;
        return -1;
    }
    return 0;
}

HIDDEN int resume(int pid, int counter)
{
    ptrace(PTRACE_CONT, pid, 0, 0);
    counts[counter]++;
    return 1;
}

/* A fork or vfork event of a thread marked ST_FORKS: 1 when handled (queued), 0 for Python. */
static int fork_event(int pid, int event, unsigned st)
{
    unsigned long msg = 0;
    if (queued >= QUEUE_MAX || ptrace(PTRACE_GETEVENTMSG, pid, 0, &msg) == -1)
        return 0;
    int child = (int)msg;
    if (child <= 0 || (unsigned)child >= PID_LIMIT || get_state(child) & ST_HELD)
        return 0;                               /* its attach stop came first: Python holds it */
    if (event == EVENT_VFORK) {
        /* Python compares the child's memory with its parent's at the child's execve; here it
           is still the same, or Python must look at this one itself */
        if (syscall(SYS_KCMP_, pid, child, KCMP_VM_, 0, 0) != 0)
            return 0;
    } else {
        if (ptrace(PTRACE_GETREGS, pid, 0, regs) == -1)
            return 0;
        unsigned long nr = regs[R_ORIG_RAX];
        if (nr != NR_FORK && !(nr == NR_CLONE && !(regs[R_RDI] & CLONE_VM_)))
            return 0;                           /* clone3, or memory shared: Python decides */
    }
    unsigned cst = ST_INITIAL | (st & (ST_SETTLED | ST_FORKS));
    put_state(child, cst);
    enqueue(event == EVENT_VFORK ? Q_VFORK : Q_FORK, pid, child, (int)(cst & ST_PYTHON));
    ptrace(PTRACE_CONT, pid, 0, 0);
    counts[C_FORKS]++;
    return 1;
}

/* Wait for the next stop Python must see: out[0] pid, out[1] wait status, out[2] 1 when the
 * registers are in the buffer already, out[3] the number of queued events (cf_events) to take
 * first. Returns 0, or -errno (ECHILD: no tracee left; EINTR: a signal came for the tracer,
 * Python runs its handler and calls again). */
int cf_wait(int *out)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, __WALL);
        if (pid < 0) {
            out[3] = (int)queued;
            return -errno;
        }
        out[0] = pid;
        out[1] = status;
        out[2] = 0;
        unsigned st = get_state(pid);
        if (!WIFSTOPPED(status)) {
            if (st & ST_PROBE)
                drop_probe(pid);
            if (nloads) {
                struct load *l = find_load(pid);
                if (l)
                    drop_load(l);
            }
            put_state(pid, 0);                  /* gone: its pid may come back as another */
            if (pid != main_pid && queued < QUEUE_MAX && !(st & ST_OWN_END)) {
                enqueue(Q_EXIT, pid, status, 0);
                counts[C_EXITS]++;
                continue;
            }
            break;
        }
        int s8 = status >> 8;
        int sig = s8 & 0xff, event = s8 >> 8;
        if (st & ST_PROBE) {
            if (!exec_probe(pid))
                break;
            st = get_state(pid);
        }
        if (st & ST_INITIAL) {
            put_state(pid, st & ~ST_INITIAL);
            if ((event == EVENT_STOP && sig == SIGTRAP) || (event == 0 && sig == SIGSTOP)) {
                ptrace(PTRACE_CONT, pid, 0, 0); /* the attach stop of a child of a fork event */
                continue;
            }
        }
        if (!(st & ST_SETTLED))
            break;
        if (s8 == SECCOMP_STOP) {
            if (ptrace(PTRACE_GETREGS, pid, 0, regs) == -1)
                break;
            out[2] = 1;
            unsigned long nr = regs[R_ORIG_RAX];
            int done = path_stop(pid, nr);
            if (done < 0)
                done = port_stop(pid, nr);
            if (done < 0 && nr == LOADER_CALL)
                done = load_stop(pid);
            if (done > 0)
                continue;
            break;
        }
        if (event == 0 && sig != SYSCALL_STOP && sig != SIGSTOP && sig != SIGTSTP
                && sig != SIGTTIN && sig != SIGTTOU) {
            ptrace(PTRACE_CONT, pid, 0, sig);   /* a signal for a settled thread: deliver it */
            counts[C_SIGNALS]++;
            continue;
        }
        if ((event == EVENT_FORK || event == EVENT_VFORK) && st & ST_FORKS
                && fork_event(pid, event, st))
            continue;
        break;
    }
    counts[C_PYTHON]++;
    out[3] = (int)queued;
    return 0;
}

/* The tick: a signal for this thread every `interval_ns` (0: none), with a handler that does
 * nothing, so that a waitpid blocked while a signal for Python is pending (it came while this loop
 * was busy, and its Python handler only runs once cf_wait returns) ends with EINTR. */
static timer_t tick;
static int ticking;

static void on_tick(int signo) { (void)signo; }

int cf_tick(int signo, long interval_ns)
{
    if (ticking) {
        timer_delete(tick);
        ticking = 0;
    }
    if (!interval_ns)
        return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_tick;                    /* no SA_RESTART: waitpid returns EINTR */
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, NULL))
        return -errno;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = signo;
    sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &sev, &tick))
        return -errno;
    struct timespec every = { interval_ns / 1000000000, interval_ns % 1000000000 };
    struct itimerspec its = { every, every };
    if (timer_settime(tick, 0, &its, NULL)) {
        int e = errno;
        timer_delete(tick);
        return -e;
    }
    ticking = 1;
    return 0;
}

/* Forget everything of a run (another one may follow in this process). */
void cf_reset(void)
{
    cf_tick(0, 0);
    if (state) {
        uint8_t *fresh = calloc(PID_LIMIT, 1); /* a fresh zeroed map costs nothing */
        if (fresh) {
            free(state);
            state = fresh;
        } else {
            memset(state, 0, PID_LIMIT);
        }
    }
    memset(counts, 0, sizeof counts);
    queued = 0;
    main_pid = 0;
    memset(probes, 0, sizeof probes);
    for (int i = 0; i < LOAD_SLOTS; i++)
        if (loads[i].rec)
            drop_load(&loads[i]);
    path_reset();
    port_reset();
}
