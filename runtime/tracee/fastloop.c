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
 *   - a signal-delivery stop (not a stop signal): the signal is delivered;
 *   - for threads Python marked "forks" too: a fork or vfork event (not a thread, not CLONE_VM
 *     except vfork's): the parent goes on, the child's first stop (the attach stop) is resumed
 *     here, and the event is queued for Python (cf_events) with what it needs to know then;
 *   - the end of a process other than the main one: queued for Python too;
 *   - the first stop of a thread after an execve Python let go on without an exec event (cf_probe):
 *     when the old memory is gone (the exec succeeded), that is queued and the stop is handled
 *     like any other of a settled thread.
 * Every other stop (and any doubt: a read or write that fails, a miss, a full queue) goes back to
 * Python with its pid and wait status, and the registers already fetched when it was a seccomp
 * stop. Python drains the queue before it handles anything else, so it sees events in order. The rules are
 * Python's own fast paths in runtime/syscall/enter.py; the cache holds only what Python's caches
 * would answer the same way (see runtime/tracee/native.py).
 *
 * Plain C, libc only; built by runtime/tracee/native.py (`build`) into _fastloop.so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define CF_ABI 2
#define R_RDI 14
#define R_ORIG_RAX 15
#define R_RSP 19
#define MAXNR 512
#define PID_LIMIT (1u << 22)            /* the kernel's PID_MAX_LIMIT on 64-bit */
#define PATH_LIMIT 4096
#define FIRST_CHUNK 256
#define RED_ZONE 128
#define SECCOMP_STOP (SIGTRAP | (7 << 8))   /* PTRACE_EVENT_SECCOMP */
#define SYSCALL_STOP (SIGTRAP | 0x80)
#define EVENT_FORK 1
#define EVENT_VFORK 2
#define EVENT_STOP 128
#define AT_FDCWD_ (-100)
#define NR_CLONE 56
#define NR_FORK 57
#define CLONE_VM_ 0x100
#define SYS_KCMP_ 312
#define KCMP_VM_ 1

/* per-pid state: bits Python sets (cf_set) ... */
#define ST_SETTLED 1    /* its stops may be handled here */
#define ST_FORKS 2      /* its fork/vfork events too */
#define ST_HELD 4       /* Python holds it (stopped before its parent's fork event) */
/* ... and the bit this loop owns */
#define ST_INITIAL 8    /* its attach stop is still to come: resume it */
#define ST_PROBE 16     /* its next stop tells whether its execve succeeded (see probes) */
#define ST_PYTHON (ST_SETTLED | ST_FORKS | ST_HELD)

/* queued events (cf_events): 4 ints each */
#define Q_EXIT 1        /* pid, wait status */
#define Q_FORK 2        /* parent, child, child's state bits */
#define Q_VFORK 3       /* parent, child, child's state bits (kcmp said: same memory) */
#define Q_EXEC 4        /* pid, its new state bits: its execve succeeded */
#define QUEUE_MAX 1024

/* follow rules (runtime/syscall/table.py) */
enum { FOLLOW = 0, NOFOLLOW = 1, OPEN_FLAGS = 2, AT_NOFOLLOW = 3, AT_FOLLOW = 4, INOTIFY = 5,
       FANOTIFY = 6 };

struct spec {
    int8_t path_reg;        /* register index of the path; -1: not handled here */
    int8_t dirfd_reg;       /* register index of the dirfd; -1: the cwd */
    int8_t rule;
    int8_t flag_reg;        /* register the rule reads; -1: none */
    int8_t cached;          /* absolute paths may be answered from the cache */
};

struct entry {
    uint64_t hash;          /* 0: free slot */
    char *key;              /* key, NUL, value, NUL */
    uint32_t klen, vlen;
};

#define CACHE_SLOTS (1u << 17)
#define CACHE_MAX (CACHE_SLOTS / 2)

static struct spec specs[MAXNR];
static unsigned long *regs;             /* Python's register buffer (27 words) */
static uint8_t *state;                  /* per pid, see ST_* */
static struct entry *cache;
static uint32_t *used;                  /* slots in use, to empty the cache in O(entries) */
static unsigned cache_count;
static char names[2048];                /* NUL-separated plain names Python must see */
static unsigned names_len;
static int main_pid;
static int queue[QUEUE_MAX * 4];
static unsigned queued;
static unsigned long counts[7];         /* cached paths, plain names, signals, forks, exits, execs,
                                           Python */

/* threads whose execve is in flight (ST_PROBE): how to tell, at their next stop, whether it
   succeeded (Python's Loop._exec_check), and their state bits if it did */
struct probe { int pid, peer, fd, after; unsigned long addr; };
#define PROBES 256
static struct probe probes[PROBES];

static void enqueue(int kind, int a, int b, int c);

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

int cf_init(unsigned long *regs_buf)
{
    regs = regs_buf;
    if (!state)
        state = calloc(PID_LIMIT, 1);   /* untouched pages cost nothing */
    if (!cache)
        cache = calloc(CACHE_SLOTS, sizeof *cache);
    if (!used)
        used = malloc(CACHE_MAX * sizeof *used);
    return state && cache && used ? 0 : -ENOMEM;
}

/* Python's bits for a thread (ST_SETTLED, ST_FORKS, ST_HELD); this loop's own are kept. */
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
    counts[5]++;
    return 1;
}

void cf_spec(int nr, int path_reg, int dirfd_reg, int rule, int flag_reg, int cached)
{
    if (nr < 0 || nr >= MAXNR)
        return;
    specs[nr].path_reg = (int8_t)path_reg;
    specs[nr].dirfd_reg = (int8_t)dirfd_reg;
    specs[nr].rule = (int8_t)rule;
    specs[nr].flag_reg = (int8_t)flag_reg;
    specs[nr].cached = (int8_t)cached;
}

int cf_names(const char *buf, unsigned len)
{
    if (len > sizeof names)
        return -E2BIG;
    memcpy(names, buf, len);
    names_len = len;
    return 0;
}

static uint64_t hash_of(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;        /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h | 1;                               /* never 0 (the free mark) */
}

void cf_clear(void)
{
    for (unsigned i = 0; i < cache_count; i++) {
        struct entry *e = &cache[used[i]];
        free(e->key);
        e->hash = 0;
    }
    cache_count = 0;
}

static struct entry *find(const char *key, size_t klen, uint64_t h)
{
    unsigned i = (unsigned)h & (CACHE_SLOTS - 1);
    for (;;) {
        struct entry *e = &cache[i];
        if (!e->hash)
            return e;
        if (e->hash == h && e->klen == klen && !memcmp(e->key, key, klen))
            return e;
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
}

int cf_put(const char *key, unsigned klen, const char *val, unsigned vlen)
{
    if (!cache || !klen || klen >= PATH_LIMIT || vlen >= PATH_LIMIT)
        return -EINVAL;
    if (cache_count >= CACHE_MAX)
        cf_clear();
    uint64_t h = hash_of(key, klen);
    struct entry *e = find(key, klen, h);
    if (e->hash)
        return 0;                               /* there already (the same answer) */
    char *buf = malloc((size_t)klen + vlen + 2);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, key, klen);
    buf[klen] = 0;
    memcpy(buf + klen + 1, val, vlen);
    buf[klen + 1 + vlen] = 0;
    e->hash = h;
    e->key = buf;
    e->klen = klen;
    e->vlen = vlen;
    used[cache_count++] = (uint32_t)(e - cache);
    return 0;
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

static void enqueue(int kind, int a, int b, int c)
{
    int *q = queue + queued++ * 4;
    q[0] = kind;
    q[1] = a;
    q[2] = b;
    q[3] = c;
}

/* The NUL-terminated string at addr in the tracee, into buf; its length, or -1. */
static long read_string(int pid, unsigned long addr, char *buf)
{
    size_t got = 0;
    size_t n = 4096 - (addr & 4095);
    if (n > FIRST_CHUNK)
        n = FIRST_CHUNK;
    while (got < PATH_LIMIT) {
        if (got + n > PATH_LIMIT)
            n = PATH_LIMIT - got;
        struct iovec local = { buf + got, n }, remote = { (void *)(addr + got), n };
        ssize_t r = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (r <= 0)
            return -1;
        char *nul = memchr(buf + got, 0, (size_t)r);
        if (nul)
            return nul - buf;
        got += (size_t)r;
        n = 4096 - ((addr + got) & 4095);
    }
    return -1;
}

static int wants_follow(const struct spec *s)
{
    unsigned long f = s->flag_reg >= 0 ? regs[s->flag_reg] : 0;
    switch (s->rule) {
    case FOLLOW: return 1;
    case OPEN_FLAGS:
        if (s->flag_reg < 0)
            f = 0100 | 01;                      /* creat(): O_CREAT | O_WRONLY */
        return !((f & 0400000) || (f & 0300) == 0300);
    case AT_NOFOLLOW: return !(f & 0x100);
    case AT_FOLLOW: return (f & 0x400) != 0;
    case INOTIFY: return !(f & 0x02000000);
    case FANOTIFY: return !(f & 0x4);
    default: return 0;
    }
}

static int is_special_name(const char *name, size_t n)
{
    for (unsigned i = 0; i < names_len;) {
        size_t m = strlen(names + i);
        if (m == n && !memcmp(names + i, name, n))
            return 1;
        i += (unsigned)m + 1;
    }
    return 0;
}

/* A seccomp stop of a settled thread: 1 when handled (resumed), 0 when Python must see it. */
static int seccomp_stop(int pid)
{
    static char path[PATH_LIMIT + 64];
    unsigned long nr = regs[R_ORIG_RAX];
    if (nr >= MAXNR || specs[nr].path_reg < 0)
        return 0;
    const struct spec *s = &specs[nr];
    unsigned long addr = regs[s->path_reg];
    if (!addr) {
        ptrace(PTRACE_CONT, pid, 0, 0);
        return 1;
    }
    long len = read_string(pid, addr, path);
    if (len < 0)
        return 0;
    if (len == 0) {
        ptrace(PTRACE_CONT, pid, 0, 0);
        return 1;
    }
    if (path[0] == '/') {
        if (!s->cached || !cache_count)
            return 0;
        struct entry *e = find(path, (size_t)len, hash_of(path, (size_t)len));
        if (!e->hash)
            return 0;
        const char *host = e->key + e->klen + 1;
        size_t size = (size_t)e->vlen + 1;
        unsigned long at = (regs[R_RSP] - RED_ZONE - size) & ~15ul;
        struct iovec local = { (void *)host, size }, remote = { (void *)at, size };
        if (process_vm_writev(pid, &local, 1, &remote, 1, 0) != (ssize_t)size)
            return 0;                           /* Python finds another place */
        regs[s->path_reg] = at;
        if (ptrace(PTRACE_SETREGS, pid, 0, regs) == -1)
            return 0;
        ptrace(PTRACE_CONT, pid, 0, 0);
        counts[0]++;
        return 1;
    }
    if (memchr(path, '/', (size_t)len) || is_special_name(path, (size_t)len))
        return 0;
    if (wants_follow(s)) {
        /* followed: only a symlink needs translating (the kernel would follow it on the host) */
        char link[PATH_LIMIT + 64];
        int dirfd = AT_FDCWD_;
        if (s->dirfd_reg >= 0)
            dirfd = (int)(uint32_t)regs[s->dirfd_reg];
        int n = dirfd == AT_FDCWD_ ? snprintf(link, sizeof link, "/proc/%d/cwd/", pid)
                                   : snprintf(link, sizeof link, "/proc/%d/fd/%d/", pid, dirfd);
        if (n < 0 || (size_t)n + (size_t)len >= sizeof link)
            return 0;
        memcpy(link + n, path, (size_t)len + 1);
        struct stat st;
        if (lstat(link, &st) == 0 && S_ISLNK(st.st_mode))
            return 0;
    }
    ptrace(PTRACE_CONT, pid, 0, 0);
    counts[1]++;
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
    counts[3]++;
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
            put_state(pid, 0);                  /* gone: its pid may come back as another */
            if (pid != main_pid && queued < QUEUE_MAX) {
                enqueue(Q_EXIT, pid, status, 0);
                counts[4]++;
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
            if (event == EVENT_STOP || (event == 0 && sig == SIGSTOP)) {
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
            if (seccomp_stop(pid))
                continue;
            break;
        }
        if (event == 0 && sig != SYSCALL_STOP && sig != SIGSTOP && sig != SIGTSTP
                && sig != SIGTTIN && sig != SIGTTOU) {
            ptrace(PTRACE_CONT, pid, 0, sig);   /* a signal for a settled thread: deliver it */
            counts[2]++;
            continue;
        }
        if ((event == EVENT_FORK || event == EVENT_VFORK) && st & ST_FORKS
                && fork_event(pid, event, st))
            continue;
        break;
    }
    counts[6]++;
    out[3] = (int)queued;
    return 0;
}

/* Forget everything of a run (another one may follow in this process). */
void cf_reset(void)
{
    cf_clear();
    if (state) {
        uint8_t *fresh = calloc(PID_LIMIT, 1); /* a fresh zeroed map costs nothing */
        if (fresh) {
            free(state);
            state = fresh;
        } else {
            memset(state, 0, PID_LIMIT);
        }
    }
    for (int i = 0; i < MAXNR; i++)
        specs[i].path_reg = -1;
    memset(counts, 0, sizeof counts);
    names_len = 0;
    queued = 0;
    main_pid = 0;
    memset(probes, 0, sizeof probes);
}
