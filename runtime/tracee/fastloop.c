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
 *     like any other of a settled thread;
 *   - with port translation (cf_port_*), the socket calls whose answer the port table gives as is:
 *     a bind to a mapped port already published for that address (queued: Python remembers the
 *     socket), a connect/sendto to a mapped port on a local address, getsockname/getpeername of a
 *     socket on a mapped host port (answered from a pidfd_getfd copy), and the calls with nothing
 *     to translate. The rules are runtime/extension/portmap.py's; whatever else comes up (AF_UNIX,
 *     a first bind, a restricted publication, a bound client...) goes to Python.
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define CF_ABI 2
#define R_R9 8
#define R_R8 9
#define R_RAX 10
#define R_RDX 12
#define R_RSI 13
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
#define Q_BOUND 5       /* tid, fd: a bind translated here (Python remembers the socket) */
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
static unsigned long counts[8];         /* cached paths, plain names, signals, forks, exits, execs,
                                           sockets, Python */

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

static int used_once;                   /* cf_init ran before: cf_reset first */
void cf_reset(void);

int cf_init(unsigned long *regs_buf)
{
    if (used_once)
        cf_reset();
    used_once = 1;
    regs = regs_buf;
    for (int i = 0; i < MAXNR; i++)
        specs[i].path_reg = -1;
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

/* ---- port translation (see runtime/extension/portmap.py) ------------------------------------ */

enum { PM_BIND = 1, PM_CONNECT = 2, PM_SENDTO = 3, PM_ACCEPT = 4, PM_GETSOCKNAME = 5,
       PM_GETPEERNAME = 6,
       PM_UNIX = 7,             /* bind/connect without port translation: only AF_UNIX paths matter */
       PM_UNIX_SENDTO = 8 };    /* the same for sendto */
#define PMF_BOUND_CLIENTS 1     /* a guest socket bound to a mapped port connected somewhere */
#define PMF_REDIRECTED 2        /* a connect/sendto was redirected already */
#define PMF_READBACK 4          /* pidfd_getfd works */
#define PMF_AUTO 8              /* automatic mode: every fixed-port bind is translated */
#define PM_MAX 256
#define PF_TCP 1
#define PF_UDP 2
#define AF_UNIX_ 1
#define AF_INET_ 2
#define AF_INET6_ 10
#define SYS_PIDFD_OPEN_ 434
#define SYS_PIDFD_GETFD_ 438

struct pm { int proto, from, to; };
struct pub { int proto, guest, host, keylen; unsigned char key[24]; };

static int8_t port_kind[MAXNR];
static int pm_flags;
static struct pm fwd[PM_MAX], rev[PM_MAX];
static int nfwd, nrev;
static struct pub pubs[PM_MAX];
static int npubs;
static struct pm restricted[PM_MAX];    /* (proto, guest port): publication on one address */
static int nrestricted;
static uint16_t bind_ports[PM_MAX];
static int nbind_ports;
static unsigned char local4[PM_MAX][4], local6[PM_MAX][16];
static int nlocal4, nlocal6;

#define BOUND_SLOTS 8192
#define BOUND_MAX 4096
static uint64_t bound[BOUND_SLOTS];     /* (tid << 32 | fd) + 1 of translated binds; 0: free */
static int nbound, bound_full;

static struct { int pid, fd; } pidfds[64];
static unsigned pidfd_next;

void cf_port_call(int nr, int kind)
{
    if (nr >= 0 && nr < MAXNR)
        port_kind[nr] = (int8_t)kind;
}

void cf_port_flags(int flags) { pm_flags = flags; }

/* The table, as runtime.net.portmap.PortTable has it now: triples (proto, a, b) of fwd (guest ->
 * host) and rev (host -> guest), the published entries (proto, guest, host, key: the family and
 * address bytes, see addr_key), the restricted keys, the guest ports binds are translated for. */
int cf_port_table(const int *f, int nf, const int *r, int nr, const unsigned char *p, int np,
                  const int *rs, int nrs, const int *bp, int nbp)
{
    if (nf > PM_MAX || nr > PM_MAX || np > PM_MAX || nrs > PM_MAX || nbp > PM_MAX)
        return -E2BIG;
    for (int i = 0; i < nf; i++)
        fwd[i] = (struct pm){ f[3 * i], f[3 * i + 1], f[3 * i + 2] };
    for (int i = 0; i < nr; i++)
        rev[i] = (struct pm){ r[3 * i], r[3 * i + 1], r[3 * i + 2] };
    for (int i = 0; i < np; i++) {
        const unsigned char *e = p + 32 * i;    /* proto, keylen, guest (2), host (2), pad, key */
        pubs[i].proto = e[0];
        pubs[i].keylen = e[1] <= 24 ? e[1] : 24;
        pubs[i].guest = e[2] | e[3] << 8;
        pubs[i].host = e[4] | e[5] << 8;
        memcpy(pubs[i].key, e + 8, 24);
    }
    for (int i = 0; i < nrs; i++)
        restricted[i] = (struct pm){ rs[2 * i], rs[2 * i + 1], 0 };
    for (int i = 0; i < nbp; i++)
        bind_ports[i] = (uint16_t)bp[i];
    nfwd = nf;
    nrev = nr;
    npubs = np;
    nrestricted = nrs;
    nbind_ports = nbp;
    return 0;
}

int cf_port_local(const unsigned char *v4, int n4, const unsigned char *v6, int n6)
{
    if (n4 > PM_MAX || n6 > PM_MAX)
        return -E2BIG;
    memcpy(local4, v4, (size_t)n4 * 4);
    memcpy(local6, v6, (size_t)n6 * 16);
    nlocal4 = n4;
    nlocal6 = n6;
    return 0;
}

static uint64_t bound_key(int tid, int fd) { return ((uint64_t)(uint32_t)tid << 32 | (uint32_t)fd) + 1; }

static int bound_has(uint64_t k)
{
    unsigned i = (unsigned)(k * 0x9E3779B97F4A7C15ull >> 51) & (BOUND_SLOTS - 1);
    while (bound[i]) {
        if (bound[i] == k)
            return 1;
        i = (i + 1) & (BOUND_SLOTS - 1);
    }
    return 0;
}

/* Python's bound_fds, kept as a superset (once full, every connect asks Python). */
void cf_port_bound(int tid, int fd)
{
    uint64_t k = bound_key(tid, fd);
    if (bound_has(k))
        return;
    if (nbound >= BOUND_MAX) {
        bound_full = 1;
        return;
    }
    unsigned i = (unsigned)(k * 0x9E3779B97F4A7C15ull >> 51) & (BOUND_SLOTS - 1);
    while (bound[i])
        i = (i + 1) & (BOUND_SLOTS - 1);
    bound[i] = k;
    nbound++;
}

static int table_get(const struct pm *t, int n, int proto, int from)
{
    for (int i = 0; i < n; i++)
        if (t[i].proto == proto && t[i].from == from)
            return t[i].to;
    return -1;
}

static int table_has_from(const struct pm *t, int n, int from)
{
    for (int i = 0; i < n; i++)
        if (t[i].from == from)
            return 1;
    return 0;
}

/* the same for TCP and UDP, else -1 (runtime.net.portmap.PortTable.same_host/same_guest) */
static int table_same(const struct pm *t, int n, int from)
{
    int tcp = table_get(t, n, PF_TCP, from);
    return tcp >= 0 && table_get(t, n, PF_UDP, from) == tcp ? tcp : -1;
}

static int read_mem(int pid, unsigned long addr, void *buf, size_t n)
{
    struct iovec local = { buf, n }, remote = { (void *)addr, n };
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)n ? 0 : -1;
}

static int write_mem(int pid, unsigned long addr, const void *buf, size_t n)
{
    struct iovec local = { (void *)buf, n }, remote = { (void *)addr, n };
    return process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)n ? 0 : -1;
}

static int sa_family(const unsigned char *b) { return b[0] | b[1] << 8; }
static int sa_port(const unsigned char *b) { return b[2] << 8 | b[3]; }

static int sa_inet(const unsigned char *b, size_t n)
{
    int fam = sa_family(b);
    return (fam == AF_INET_ && n >= 16) || (fam == AF_INET6_ && n >= 24);
}

/* the IPv4 part of an address (AF_INET, or v4-mapped AF_INET6), or NULL */
static const unsigned char *ipv4_part(const unsigned char *b)
{
    static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (sa_family(b) == AF_INET_)
        return b + 4;
    return memcmp(b + 8, mapped, 12) ? NULL : b + 20;
}

/* runtime.net.localaddr.LocalAddresses: loopback, wildcard, this node's addresses */
static int is_local(const unsigned char *b)
{
    static const unsigned char any6[16], lo6[16] = { [15] = 1 };
    const unsigned char *v4 = ipv4_part(b);
    if (v4) {
        if (v4[0] == 127 || !(v4[0] | v4[1] | v4[2] | v4[3]))
            return 1;
        for (int i = 0; i < nlocal4; i++)
            if (!memcmp(local4[i], v4, 4))
                return 1;
        return 0;
    }
    if (!memcmp(b + 8, any6, 16) || !memcmp(b + 8, lo6, 16))
        return 1;
    for (int i = 0; i < nlocal6; i++)
        if (!memcmp(local6[i], b + 8, 16))
            return 1;
    return 0;
}

/* the published-entry key of a guest address: family, address (and IPv6 scope id, 0 if absent),
 * which is what runtime.net.sockaddr.address_text turns into text */
static int addr_key(const unsigned char *b, size_t n, unsigned char *key)
{
    memcpy(key, b, 2);
    if (sa_family(b) == AF_INET_) {
        memcpy(key + 2, b + 4, 4);
        return 6;
    }
    memcpy(key + 2, b + 8, 16);
    if (n >= 28)
        memcpy(key + 18, b + 24, 4);
    else
        memset(key + 18, 0, 4);
    return 22;
}

/* A copy of the tracee's descriptor (pidfd_getfd), or -1. */
static int dup_of(int tid, int fd)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        int slot = -1;
        for (int i = 0; i < 64; i++)
            if (pidfds[i].pid == tid && pidfds[i].fd > 0)
                slot = i;
        if (slot < 0) {
            int pfd = (int)syscall(SYS_PIDFD_OPEN_, tid, 0);
            if (pfd < 0)
                return -1;                      /* a thread (EINVAL): Python asks its process */
            slot = (int)(pidfd_next++ % 64);
            if (pidfds[slot].fd > 0)
                close(pidfds[slot].fd);
            pidfds[slot].pid = tid;
            pidfds[slot].fd = pfd;
        }
        int d = (int)syscall(SYS_PIDFD_GETFD_, pidfds[slot].fd, fd, 0);
        if (d >= 0 || errno != ESRCH)
            return d;
        close(pidfds[slot].fd);                 /* a dead process's pidfd: the id came back */
        pidfds[slot].pid = 0;
        pidfds[slot].fd = 0;
    }
    return -1;
}

static int proto_of(int dup)
{
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(dup, SOL_SOCKET, SO_PROTOCOL, &v, &len) != 0)
        return 0;
    return v == 6 || v == 262 ? PF_TCP : v == 17 || v == 136 ? PF_UDP : 0;
}

static int proto_of_fd(int tid, int fd)
{
    int d = dup_of(tid, fd);
    if (d < 0)
        return -1;
    int p = proto_of(d);
    close(d);
    return p;
}

/* push n bytes below the red zone; the address, or 0 */
static unsigned long push(int pid, const void *data, size_t n)
{
    unsigned long at = (regs[R_RSP] - RED_ZONE - n) & ~15ul;
    return write_mem(pid, at, data, n) ? 0 : at;
}

/* Set one register in the tracee; on failure (the tracee is gone) the buffer is left as Python
 * must see it. */
static int set_reg(int pid, int reg, unsigned long value)
{
    unsigned long old = regs[reg];
    regs[reg] = value;
    if (ptrace(PTRACE_SETREGS, pid, 0, regs) == -1) {
        regs[reg] = old;
        return -1;
    }
    return 0;
}

static int resume(int pid)
{
    ptrace(PTRACE_CONT, pid, 0, 0);
    counts[6]++;
    return 1;
}

/* A seccomp stop of a socket call of a settled thread: 1 when handled, 0 for Python. */
static int port_stop(int pid, int kind)
{
    unsigned char b[128];
    int fd = (int)(uint32_t)regs[R_RDI];
    if (kind == PM_ACCEPT)                      /* the filter stops only with an address */
        return pm_flags & PMF_BOUND_CLIENTS ? 0 : resume(pid);
    if (kind == PM_GETSOCKNAME || kind == PM_GETPEERNAME) {
        if (!nrev)
            return resume(pid);
        if (!(pm_flags & PMF_READBACK))
            return 0;
        int d = dup_of(pid, fd);
        if (d < 0)
            return 0;
        socklen_t len = sizeof b;
        int bad = kind == PM_GETSOCKNAME ? getsockname(d, (struct sockaddr *)b, &len)
                                         : getpeername(d, (struct sockaddr *)b, &len);
        int proto = -1;
        if (!bad && len <= sizeof b && sa_inet(b, len)) {
            int hport = sa_port(b);
            int guest = -1;
            if (table_has_from(rev, nrev, hport) && (kind == PM_GETSOCKNAME || is_local(b))) {
                guest = table_same(rev, nrev, hport);
                if (guest < 0) {
                    proto = proto_of(d);
                    guest = proto ? table_get(rev, nrev, proto, hport) : -1;
                }
            }
            close(d);
            if (guest < 0)
                return resume(pid);
            uint32_t room;
            unsigned long addr = regs[R_RSI], lenptr = regs[R_RDX];
            if (read_mem(pid, lenptr, &room, 4))
                return resume(pid);
            if (room >= 1u << 31)
                return resume(pid);             /* the kernel's EINVAL */
            b[2] = (unsigned char)(guest >> 8);
            b[3] = (unsigned char)guest;
            uint32_t full = len;
            if (write_mem(pid, addr, b, room < len ? room : len) || write_mem(pid, lenptr, &full, 4))
                return resume(pid);
            unsigned long nr = regs[R_ORIG_RAX];
            regs[R_RAX] = 0;                    /* the call's result */
            if (set_reg(pid, R_ORIG_RAX, (unsigned long)-1)) {  /* skipped */
                regs[R_ORIG_RAX] = nr;
                return 0;
            }
            return resume(pid);
        }
        close(d);
        return resume(pid);
    }
    int to = kind == PM_SENDTO || kind == PM_UNIX_SENDTO;
    int areg = to ? R_R8 : R_RSI, lreg = to ? R_R9 : R_RDX;
    unsigned long addr = regs[areg];
    uint32_t alen = (uint32_t)regs[lreg];
    if (!addr || alen < 3)
        return resume(pid);
    size_t size = alen < sizeof b ? alen : sizeof b;
    if (read_mem(pid, addr, b, size))
        return 0;
    if (sa_family(b) == AF_UNIX_)
        return 0;                               /* a path: the engine's own handler */
    if (kind >= PM_UNIX || alen < 16 || !sa_inet(b, size))
        return resume(pid);
    int gport = sa_port(b);
    if (kind == PM_BIND) {
        if (gport == 0)
            return resume(pid);
        int wanted = pm_flags & PMF_AUTO;
        for (int i = 0; i < nbind_ports && !wanted; i++)
            wanted = bind_ports[i] == gport;
        if (!wanted)
            return resume(pid);
        int proto = proto_of_fd(pid, fd);
        if (proto <= 0)
            return proto < 0 ? 0 : resume(pid);
        int host = table_get(fwd, nfwd, proto, gport);
        if (host < 0)
            return 0;                           /* the kernel chooses: Python's work */
        for (int i = 0; i < nrestricted; i++)
            if (restricted[i].proto == proto && restricted[i].from == gport)
                return 0;
        unsigned char key[24];
        int klen = addr_key(b, size, key), published = 0;
        for (int i = 0; i < npubs && !published; i++)
            published = pubs[i].proto == proto && pubs[i].guest == gport && pubs[i].host == host
                        && pubs[i].keylen == klen && !memcmp(pubs[i].key, key, (size_t)klen);
        if (!published || queued >= QUEUE_MAX)
            return 0;                           /* Python watches it succeed and publishes it */
        b[2] = (unsigned char)(host >> 8);
        b[3] = (unsigned char)host;
        unsigned long at = push(pid, b, size);
        if (!at)
            return 0;
        if (set_reg(pid, areg, at))
            return 0;
        if (!bound_has(bound_key(pid, fd))) {
            cf_port_bound(pid, fd);
            enqueue(Q_BOUND, pid, fd, 0);
        }
        return resume(pid);
    }
    /* connect, sendto */
    if (!is_local(b))
        return resume(pid);
    if (!(pm_flags & PMF_BOUND_CLIENTS) && (bound_full || bound_has(bound_key(pid, fd))))
        return 0;                               /* a bound client? Python looks */
    if (!table_has_from(fwd, nfwd, gport))
        return resume(pid);
    int host = table_same(fwd, nfwd, gport);
    if (host < 0) {
        int proto = proto_of_fd(pid, fd);
        if (proto < 0)
            return 0;
        host = proto ? table_get(fwd, nfwd, proto, gport) : -1;
        if (host < 0)
            return resume(pid);
    }
    if (!(pm_flags & PMF_REDIRECTED))
        return 0;                               /* the first one: Python notes it */
    b[2] = (unsigned char)(host >> 8);
    b[3] = (unsigned char)host;
    unsigned long at = push(pid, b, size);
    if (!at)
        return 0;
    if (set_reg(pid, areg, at))
        return 0;
    return resume(pid);
}

/* A seccomp stop of a settled thread: 1 when handled (resumed), 0 when Python must see it. */
static int seccomp_stop(int pid)
{
    static char path[PATH_LIMIT + 64];
    unsigned long nr = regs[R_ORIG_RAX];
    if (nr >= MAXNR)
        return 0;
    if (specs[nr].path_reg < 0)
        return port_kind[nr] ? port_stop(pid, port_kind[nr]) : 0;
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
        if (set_reg(pid, s->path_reg, at))
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
    counts[7]++;
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
    memset(port_kind, 0, sizeof port_kind);
    pm_flags = nfwd = nrev = npubs = nrestricted = nbind_ports = nlocal4 = nlocal6 = 0;
    memset(bound, 0, sizeof bound);
    nbound = bound_full = 0;
    for (int i = 0; i < 64; i++) {
        if (pidfds[i].fd > 0)
            close(pidfds[i].fd);
        pidfds[i].pid = pidfds[i].fd = 0;
    }
}
