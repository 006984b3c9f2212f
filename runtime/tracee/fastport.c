/* Socket stops of the native stop loop (see fastloop.c), with port translation: the cases whose
 * answer runtime/extension/portmap.py's table gives as is. Python gives the table (cf_port_table,
 * cf_port_local, cf_port_flags) after every change and remembers the sockets bound here (Q_BOUND);
 * whatever else comes up (AF_UNIX paths, a first bind, a restricted publication, a bound client, a
 * socket of a thread pidfd_open refuses) goes to Python. Without port translation, bind, connect
 * and sendto only stop for their AF_UNIX paths: the others go on from here. */
#include "fastloop.h"

enum { PM_BIND = 1, PM_CONNECT = 2, PM_SENDTO = 3, PM_ACCEPT = 4, PM_GETSOCKNAME = 5,
       PM_GETPEERNAME = 6,
       PM_UNIX = 7,             /* bind/connect without port translation: only AF_UNIX paths matter */
       PM_UNIX_SENDTO = 8 };    /* the same for sendto */
#define PMF_BOUND_CLIENTS 1     /* a guest socket bound to a mapped port connected somewhere */
#define PMF_REDIRECTED 2        /* a connect/sendto was redirected already */
#define PMF_READBACK 4          /* pidfd_getfd works */
#define PMF_AUTO 8              /* automatic mode: every fixed-port bind is translated */
#define PM_MAX 256              /* entries of each table Python gives (more: cf_port_table refuses) */
#define PUB_SIZE 32             /* a published entry as cf_port_table reads it ... */
#define PUB_KEY 24              /* ... and its key's room */
#define PF_TCP 1
#define PF_UDP 2
#define AF_UNIX_ 1
#define AF_INET_ 2
#define AF_INET6_ 10
#define SYS_PIDFD_OPEN_ 434
#define SYS_PIDFD_GETFD_ 438

struct pm { int proto, from, to; };
struct pub { int proto, guest, host, keylen; unsigned char key[PUB_KEY]; };

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
        const unsigned char *e = p + PUB_SIZE * i;  /* proto, keylen, guest (2), host (2), pad, key */
        pubs[i].proto = e[0];
        pubs[i].keylen = e[1] <= PUB_KEY ? e[1] : PUB_KEY;
        pubs[i].guest = e[2] | e[3] << 8;
        pubs[i].host = e[4] | e[5] << 8;
        memcpy(pubs[i].key, e + 8, PUB_KEY);
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

/* The call's address register points at a copy of sockaddr `b` (`size` bytes) with `port`:
 * 0, or -1 when it could not be done (Python does it). */
static int redirect(int pid, int areg, unsigned char *b, size_t size, int port)
{
    b[2] = (unsigned char)(port >> 8);
    b[3] = (unsigned char)port;
    unsigned long at = push(pid, b, size);
    return at && !set_reg(pid, areg, at) ? 0 : -1;
}

/* See fastloop.h. */
HIDDEN int port_stop(int pid, unsigned long nr)
{
    int kind = nr < MAXNR ? port_kind[nr] : 0;
    if (!kind)
        return -1;
    unsigned char b[128];
    int fd = (int)(uint32_t)regs[R_RDI];
    if (kind == PM_ACCEPT)                      /* the filter stops only with an address */
        return pm_flags & PMF_BOUND_CLIENTS ? 0 : resume(pid, C_SOCKETS);
    if (kind == PM_GETSOCKNAME || kind == PM_GETPEERNAME) {
        if (!nrev)
            return resume(pid, C_SOCKETS);
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
                return resume(pid, C_SOCKETS);
            uint32_t room;
            unsigned long addr = regs[R_RSI], lenptr = regs[R_RDX];
            if (read_mem(pid, lenptr, &room, 4))
                return resume(pid, C_SOCKETS);
            if (room >= 1u << 31)
                return resume(pid, C_SOCKETS);             /* the kernel's EINVAL */
            b[2] = (unsigned char)(guest >> 8);
            b[3] = (unsigned char)guest;
            uint32_t full = len;
            size_t n = room < len ? room : len;     /* the address (cut to the room), its length */
            struct iovec local[2] = { { b, n }, { &full, 4 } };
            struct iovec remote[2] = { { (void *)addr, n }, { (void *)lenptr, 4 } };
            if (process_vm_writev(pid, local, 2, remote, 2, 0) != (ssize_t)(n + 4))
                return resume(pid, C_SOCKETS);
            unsigned long nr = regs[R_ORIG_RAX];
            regs[R_RAX] = 0;                    /* the call's result */
            if (set_reg(pid, R_ORIG_RAX, (unsigned long)-1)) {  /* skipped */
                regs[R_ORIG_RAX] = nr;
                return 0;
            }
            return resume(pid, C_SOCKETS);
        }
        close(d);
        return resume(pid, C_SOCKETS);
    }
    int to = kind == PM_SENDTO || kind == PM_UNIX_SENDTO;
    int areg = to ? R_R8 : R_RSI, lreg = to ? R_R9 : R_RDX;
    unsigned long addr = regs[areg];
    uint32_t alen = (uint32_t)regs[lreg];
    if (!addr || alen < 3)
        return resume(pid, C_SOCKETS);
    size_t size = alen < sizeof b ? alen : sizeof b;
    if (read_mem(pid, addr, b, size))
        return 0;
    if (sa_family(b) == AF_UNIX_)
        return 0;                               /* a path: the engine's own handler */
    if (kind >= PM_UNIX || alen < 16 || !sa_inet(b, size))
        return resume(pid, C_SOCKETS);
    int gport = sa_port(b);
    if (kind == PM_BIND) {
        if (gport == 0)
            return resume(pid, C_SOCKETS);
        int wanted = pm_flags & PMF_AUTO;
        for (int i = 0; i < nbind_ports && !wanted; i++)
            wanted = bind_ports[i] == gport;
        if (!wanted)
            return resume(pid, C_SOCKETS);
        int proto = proto_of_fd(pid, fd);
        if (proto <= 0)
            return proto < 0 ? 0 : resume(pid, C_SOCKETS);
        int host = table_get(fwd, nfwd, proto, gport);
        if (host < 0)
            return 0;                           /* the kernel chooses: Python's work */
        for (int i = 0; i < nrestricted; i++)
            if (restricted[i].proto == proto && restricted[i].from == gport)
                return 0;
        unsigned char key[PUB_KEY];
        int klen = addr_key(b, size, key), published = 0;
        for (int i = 0; i < npubs && !published; i++)
            published = pubs[i].proto == proto && pubs[i].guest == gport && pubs[i].host == host
                        && pubs[i].keylen == klen && !memcmp(pubs[i].key, key, (size_t)klen);
        if (!published || queued >= QUEUE_MAX)
            return 0;                           /* Python watches it succeed and publishes it */
        if (redirect(pid, areg, b, size, host))
            return 0;
        if (!bound_has(bound_key(pid, fd))) {
            cf_port_bound(pid, fd);
            enqueue(Q_BOUND, pid, fd, 0);
        }
        return resume(pid, C_SOCKETS);
    }
    /* connect, sendto */
    if (!is_local(b))
        return resume(pid, C_SOCKETS);
    if (!(pm_flags & PMF_BOUND_CLIENTS) && (bound_full || bound_has(bound_key(pid, fd))))
        return 0;                               /* a bound client? Python looks */
    if (!table_has_from(fwd, nfwd, gport))
        return resume(pid, C_SOCKETS);
    int host = table_same(fwd, nfwd, gport);
    if (host < 0) {
        int proto = proto_of_fd(pid, fd);
        if (proto < 0)
            return 0;
        host = proto ? table_get(fwd, nfwd, proto, gport) : -1;
        if (host < 0)
            return resume(pid, C_SOCKETS);
    }
    if (!(pm_flags & PMF_REDIRECTED))
        return 0;                               /* the first one: Python notes it */
    if (redirect(pid, areg, b, size, host))
        return 0;
    return resume(pid, C_SOCKETS);
}

HIDDEN void port_reset(void)
{
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
