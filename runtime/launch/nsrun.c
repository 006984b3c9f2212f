/* carryon-nsrun: the userns engine's executor (static, no Python). Python decides, this runs.

   Two ways in:
   - `carryon-nsrun --plan FD`: runtime.userns wrote the fully resolved plan of a tracer-less run
     (runtime/launch/nsrun.py: `exec_plan`) into FD and exec'd us in its place;
   - `carryon-nsrun --warm N LAUNCH... ARGS...`: the sh launcher's warm start (runtime/launcher.sh
     `start()`); LAUNCH (N words) is how the launcher would start the Python runtime. A plain run
     (no leading --carryon-* argument, no CARRYON_* variable but CARRYON_CACHE and
     CARRYON_ENGINE=auto|userns, not traced, no seccomp filter) of an archive whose trusted plan
     (`nsplan-KEY-HOST-UID` beside the runtime dir, written by runtime/launch/nsrun.py
     `save_template` after the Python runtime ran the same plain run on userns) matches this
     archive's trailer, size, manifest, this kernel and this user, is run here; anything else
     execs LAUNCH ARGS unchanged (the Python runtime re-decides).

   The run does what runtime/userns.py's module docstring says, in the same order, with the same
   answers: set-up refusals (nothing of the guest ran) undo the state and exec the plan's fallback
   (the Python command line) with _CARRYON_USERNS_REFUSED=WHY, so that `auto` takes the next rung;
   127/126 and their messages; the parent is the guests' subreaper, forwards signals like
   runtime.engine._Forwarder, waits like runtime.userns._wait, keeps the no-orphans watchdog, and
   removes the run's directory at the end (on a warm start, by a process of its own once the status is
   known: the caller does not wait for it). Exit status: the main process's, 128+N for signal N. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAGIC "carryon-nsplan-1"
#define REFUSED_ENV "_CARRYON_USERNS_REFUSED"

/* ---------------------------------------------------------------- small helpers */
static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        static const char m[] = "carryon: out of memory\n";
        if (write(2, m, sizeof m - 1) < 0) { /* nothing to do */ }
        _exit(125);
    }
    return p;
}

static char *cat(const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *p = xmalloc(la + lb + lc + 1);
    memcpy(p, a, la);
    memcpy(p + la, b, lb);
    memcpy(p + la + lb, c, lc + 1);
    return p;
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void say(const char *s) { (void)write_all(2, s, strlen(s)); }

static char *read_fd(int fd, size_t *len, size_t max) {
    size_t cap = 4096, n = 0;
    char *buf = xmalloc(cap + 1);
    for (;;) {
        if (n == cap) {
            if (cap >= max) break;
            cap *= 2;
            char *b = realloc(buf, cap + 1);
            if (!b) { free(buf); return NULL; }
            buf = b;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            free(buf);
            return NULL;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* ---------------------------------------------------------------- signal dispositions
   Set with the raw system call: a libc keeps some real-time signals for itself (glibc 32-33,
   musl 32-34) and refuses them; nsrun uses no threads nor timers. x86_64: the kernel returns from
   a handler through the restorer (rt_sigreturn). */
struct ksigaction { void (*handler)(int); unsigned long flags; void (*restorer)(void); uint64_t mask; };
void nsrun_restore(void);
__asm__(".pushsection .text\n.type nsrun_restore,@function\nnsrun_restore:\n\tmov $15, %rax\n\tsyscall\n"
        ".popsection\n");
#define KSA_RESTORER 0x04000000UL

static int ksig(int sig, void (*handler)(int)) {
    struct ksigaction k;
    memset(&k, 0, sizeof k);
    k.handler = handler;
    k.flags = KSA_RESTORER | SA_RESTART;
    k.restorer = nsrun_restore;
    return (int)syscall(SYS_rt_sigaction, sig, &k, NULL, 8);
}

/* ---------------------------------------------------------------- SHA-256 (FIPS 180-4) */
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static void sha256_hex(const unsigned char *data, size_t len, char out[65]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    unsigned char tail[128];
    size_t i, full = len / 64 * 64, rest = len - full;
    for (i = 0; i < full; i += 64) sha256_block(h, data + i);
    memset(tail, 0, sizeof tail);
    memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    size_t tl = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (i = 0; i < 8; i++) tail[tl - 1 - i] = (unsigned char)(bits >> (8 * i));
    sha256_block(h, tail);
    if (tl == 128) sha256_block(h, tail + 64);
    static const char hx[] = "0123456789abcdef";
    for (i = 0; i < 32; i++) {
        unsigned char byte = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
        out[2 * i] = hx[byte >> 4];
        out[2 * i + 1] = hx[byte & 15];
    }
    out[64] = 0;
}

/* ---------------------------------------------------------------- the plan */
struct bind { const char *host, *guest, *flags; };
struct envrec { char kind; const char *text; };     /* '=' literal K=V, 'h' host's K, 'n' node name */
struct owner { const char *path, *uid, *gid; };     /* the owner view's entries */

struct plan {
    const char *engines, *key, *size, *mf_off, *mf_len, *mf_sha, *uid, *euid, *krel, *kver, *host, *entry;
    const char *rootfs, *ov[4], *rundir_cache, *rundir_key, *unmake, *tidy;
    const char *uid_map, *gid_map, *setgroups, *fexe;
    const char *ids_uid, *ids_gid, *cwd, *cwd_make, *cwd_warn, *prefix;
    const char **remove; int nremove;
    struct bind *binds; int nbinds;
    struct owner *owners; int nowners;
    struct envrec *env; int nenv;
    const char **argv; int nargv;
    const char **entrypoint; int nentry;
    const char **cmd; int ncmd;
    const char **fargv; int nfargv;
    const char **fenv; int nfenv;
    int stop_sig, fwd_all, wait_all;
};

/* The plan's bytes: NUL-terminated tokens, the first MAGIC, then records TAG ARGS... (each tag has
   a fixed number of arguments), the last "end". 0 when well formed. */
static int parse_plan(char *buf, size_t len, struct plan *p) {
    size_t ntok = 0, i;
    if (len == 0 || buf[len - 1] != 0) return -1;
    for (i = 0; i < len; i++) ntok += buf[i] == 0;
    const char **tok = xmalloc(ntok * sizeof *tok);
    size_t t = 0;
    for (i = 0; i < len; i += strlen(buf + i) + 1) tok[t++] = buf + i;
    memset(p, 0, sizeof *p);
    p->remove = xmalloc(ntok * sizeof *p->remove);
    p->binds = xmalloc(ntok * sizeof *p->binds);
    p->owners = xmalloc(ntok * sizeof *p->owners);
    p->env = xmalloc(ntok * sizeof *p->env);
    p->argv = xmalloc((ntok + 1) * sizeof *p->argv);
    p->entrypoint = xmalloc(ntok * sizeof *p->entrypoint);
    p->cmd = xmalloc(ntok * sizeof *p->cmd);
    p->fargv = xmalloc((ntok + 1) * sizeof *p->fargv);
    p->fenv = xmalloc((ntok + 2) * sizeof *p->fenv);
    p->stop_sig = SIGTERM;
    p->prefix = "carryon";
    if (ntok < 2 || strcmp(tok[0], MAGIC) != 0) return -1;
    int ended = 0;
    for (i = 1; i < ntok && !ended;) {
        const char *tag = tok[i++];
        size_t left = ntok - i;
#define ARGS(n) if (left < (n)) return -1
#define ONE(name, field) else if (!strcmp(tag, name)) { ARGS(1); p->field = tok[i++]; }
        if (!strcmp(tag, "end")) ended = 1;
        ONE("key", key) ONE("size", size) ONE("host", host) ONE("entry", entry) ONE("rootfs", rootfs)
        ONE("unmake", unmake) ONE("tidy", tidy) ONE("setgroups", setgroups) ONE("prefix", prefix)
        ONE("uidmap", uid_map) ONE("gidmap", gid_map) ONE("fexe", fexe) ONE("engines", engines)
        else if (!strcmp(tag, "manifest")) { ARGS(3); p->mf_off = tok[i]; p->mf_len = tok[i + 1]; p->mf_sha = tok[i + 2]; i += 3; }
        else if (!strcmp(tag, "user")) { ARGS(2); p->uid = tok[i]; p->euid = tok[i + 1]; i += 2; }
        else if (!strcmp(tag, "kernel")) { ARGS(2); p->krel = tok[i]; p->kver = tok[i + 1]; i += 2; }
        else if (!strcmp(tag, "overlay")) { ARGS(4); for (int k = 0; k < 4; k++) p->ov[k] = tok[i + k]; i += 4; }
        else if (!strcmp(tag, "rundir")) { ARGS(2); p->rundir_cache = tok[i]; p->rundir_key = tok[i + 1]; i += 2; }
        else if (!strcmp(tag, "remove")) { ARGS(1); p->remove[p->nremove++] = tok[i++]; }
        else if (!strcmp(tag, "ids")) { ARGS(2); p->ids_uid = tok[i]; p->ids_gid = tok[i + 1]; i += 2; }
        else if (!strcmp(tag, "bind")) { ARGS(3); p->binds[p->nbinds++] = (struct bind){tok[i], tok[i + 1], tok[i + 2]}; i += 3; }
        else if (!strcmp(tag, "owner")) { ARGS(3); p->owners[p->nowners++] = (struct owner){tok[i], tok[i + 1], tok[i + 2]}; i += 3; }
        else if (!strcmp(tag, "cwd")) { ARGS(3); p->cwd = tok[i]; p->cwd_make = tok[i + 1]; p->cwd_warn = tok[i + 2]; i += 3; }
        else if (!strcmp(tag, "env")) { ARGS(1); p->env[p->nenv].kind = '='; p->env[p->nenv++].text = tok[i++]; }
        else if (!strcmp(tag, "envhost")) { ARGS(1); p->env[p->nenv].kind = 'h'; p->env[p->nenv++].text = tok[i++]; }
        else if (!strcmp(tag, "envnode")) { ARGS(1); p->env[p->nenv].kind = 'n'; p->env[p->nenv++].text = tok[i++]; }
        else if (!strcmp(tag, "arg")) { ARGS(1); p->argv[p->nargv++] = tok[i++]; }
        else if (!strcmp(tag, "entrypoint")) { ARGS(1); p->entrypoint[p->nentry++] = tok[i++]; }
        else if (!strcmp(tag, "cmd")) { ARGS(1); p->cmd[p->ncmd++] = tok[i++]; }
        else if (!strcmp(tag, "fargv")) { ARGS(1); p->fargv[p->nfargv++] = tok[i++]; }
        else if (!strcmp(tag, "fenv")) { ARGS(1); p->fenv[p->nfenv++] = tok[i++]; }
        else if (!strcmp(tag, "signal")) {
            ARGS(2);
            p->stop_sig = atoi(tok[i]);
            p->fwd_all = tok[i + 1][0] == '1';
            i += 2;
        }
        else if (!strcmp(tag, "waitall")) { ARGS(1); p->wait_all = tok[i++][0] == '1'; }
        else return -1;
#undef ONE
#undef ARGS
    }
    p->argv[p->nargv] = NULL;
    p->fargv[p->nfargv] = NULL;
    p->fenv[p->nfenv] = NULL;
    if (!ended || !p->rootfs || !p->uid_map || !p->gid_map || !p->cwd) return -1;
    if (p->stop_sig <= 0 || p->stop_sig >= 65) return -1;
    return 0;
}

/* ---------------------------------------------------------------- removal (runtime.cache.remove) */
static void remove_at(int pfd, const char *name, int depth) {
    if (unlinkat(pfd, name, 0) == 0 || errno == ENOENT) return;
    if (depth > 512) return;
    int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == EACCES) {       /* our own dir without read/search permission */
        int op = openat(pfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        if (op >= 0) {
            if (fstat(op, &st) == 0 && st.st_uid == getuid()) {
                char proc[64];
                snprintf(proc, sizeof proc, "/proc/self/fd/%d", op);
                (void)chmod(proc, 0700);
            }
            close(op);
        }
        fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_uid == getuid() && (st.st_mode & 0700) != 0700)
        (void)fchmod(fd, (st.st_mode & 07777) | 0700);
    DIR *d = fdopendir(fd);
    if (!d) { close(fd); return; }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        remove_at(dirfd(d), de->d_name, depth + 1);
    }
    closedir(d);
    (void)unlinkat(pfd, name, AT_REMOVEDIR);
}

static void remove_tree(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    char *slash = strrchr(copy, '/');
    if (!slash) { free(copy); return; }
    *slash = 0;
    int pfd = open(slash == copy ? "/" : copy, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (pfd >= 0) {
        remove_at(pfd, slash + 1, 0);
        close(pfd);
    }
    free(copy);
}

/* ---------------------------------------------------------------- set-up helpers */
/* Host path of `guest` inside `root`, symlinks resolved inside it (runtime.userns._resolve); the
   missing part made with `make` 'd' (directories) or 'f' (the last one a file). NULL: missing. */
static char *resolve(const char *root, const char *guest, char make) {
    size_t cap = strlen(root) + strlen(guest) + PATH_MAX + 2;
    char *done = xmalloc(cap);
    size_t root_len = strlen(root);
    strcpy(done, root);
    char *rest = strdup(guest);
    int hops = 0;
    if (!rest) return NULL;
    char *cur = rest;
    for (;;) {
        while (*cur == '/') cur++;
        if (!*cur) break;
        char *end = strchr(cur, '/');
        size_t n = end ? (size_t)(end - cur) : strlen(cur);
        char *next = end ? end : cur + n;
        int more = 0;
        for (char *q = next; *q; q++)
            if (*q != '/') { more = 1; break; }
        if (n == 1 && cur[0] == '.') { cur = next; continue; }
        if (n == 2 && cur[0] == '.' && cur[1] == '.') {
            char *s = strrchr(done, '/');
            if (strlen(done) > root_len && s && (size_t)(s - done) >= root_len) *s = 0;
            cur = next;
            continue;
        }
        size_t dl = strlen(done);
        if (dl + n + 2 > cap) { free(rest); free(done); return NULL; }
        done[dl] = '/';
        memcpy(done + dl + 1, cur, n);
        done[dl + 1 + n] = 0;
        char target[PATH_MAX + 1];
        ssize_t tl = readlink(done, target, PATH_MAX);
        if (tl < 0) {
            if (errno == ENOENT) {
                if (!make) { free(rest); free(done); return NULL; }
                if (more || make == 'd') {
                    if (mkdir(done, 0755) < 0 && errno != EEXIST) { free(rest); free(done); return NULL; }
                } else {
                    int fd = open(done, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                    if (fd < 0) { free(rest); free(done); return NULL; }
                    close(fd);
                }
            }
            cur = next;
            continue;
        }
        target[tl] = 0;
        if (++hops > 40) { free(rest); free(done); return NULL; }
        done[dl] = 0;                       /* the link itself is not a component */
        if (target[0] == '/') done[root_len] = 0;
        char *nrest = cat(target, "/", next);
        free(rest);
        rest = cur = nrest;
    }
    free(rest);
    return done;
}

/* ---------------------------------------------------------------- the owner view (runtime.userns.owner_view)
   A root guest (uid and gid 0 in the namespace) over an image whose recorded owners one mapped id
   cannot show: the plan lists the entries that differ (`owner PATH UID GID`). The child installs a
   filter just before exec that sends only the stat family (stat, fstat, lstat, newfstatat, statx;
   x86_64) to a listener (SECCOMP_RET_USER_NOTIF) it passes to the parent (SCM_RIGHTS). The parent
   builds a table of the listed files' (st_dev, st_ino) through /proc/CHILD/root once the mounts are
   made, and a thread of it answers each call: the file it names is found (fd: /proc/PID/fd/N;
   path: read from the guest's memory and resolved with openat2 RESOLVE_IN_ROOT in /proc/PID/root,
   a relative one against the guest path of its dirfd or cwd); a listed file is stat'ed here, its
   uid/gid patched, the result written into the guest's buffer (process_vm_writev) and the call
   answered 0; anything else (the common case, and every error) continues in the kernel
   (SECCOMP_USER_NOTIF_FLAG_CONTINUE). Linux 5.6+ (runtime.userns decides before the plan); a
   refused filter is a refusal (the next rung runs). chown, fchown, lchown and fchownat go to the
   same listener: see `ov_chown` (the new owner recorded in the table, answered 0). */
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

struct ov_sock_filter { uint16_t code; uint8_t jt, jf; uint32_t k; };
struct ov_sock_fprog { unsigned short len; struct ov_sock_filter *filter; };
struct ov_data { int nr; uint32_t arch; uint64_t ip; uint64_t args[6]; };
struct ov_notif { uint64_t id; uint32_t pid; uint32_t flags; struct ov_data data; };
struct ov_resp { uint64_t id; int64_t val; int32_t error; uint32_t flags; };
struct ov_how { uint64_t flags, mode, resolve; };
struct ov_entry { uint64_t dev, ino; uint32_t uid, gid; };

#define OV_ARCH_X86_64 0xC000003EU
#define OV_RET_ALLOW 0x7fff0000U
#define OV_RET_NOTIF 0x7fc00000U
#define OV_NEW_LISTENER (1UL << 3)
#define OV_RECV 0xC0502100UL
#define OV_SEND 0xC0182101UL
#define OV_ID_VALID 0x80082102UL      /* (the first, _IOR, number: every kernel takes it) */
#define OV_CONTINUE 1U
#define OV_SYS_STAT 4
#define OV_SYS_FSTAT 5
#define OV_SYS_LSTAT 6
#define OV_SYS_NEWFSTATAT 262
#define OV_SYS_STATX 332
#define OV_SYS_CHOWN 92
#define OV_SYS_FCHOWN 93
#define OV_SYS_LCHOWN 94
#define OV_SYS_FCHOWNAT 260
#define OV_MAX 65536                    /* inodes the view holds at most (chowns beyond: the kernel's EINVAL) */
#define OV_SYS_OPENAT2 437
#define OV_RESOLVE_NO_MAGICLINKS 0x02
#define OV_RESOLVE_IN_ROOT 0x10
#define OV_AT_STATX_SYNC_TYPE 0x6000

/* a one-byte message with room for one SCM_RIGHTS descriptor (`ctl`: CMSG_SPACE(sizeof(int))) */
static void fd_msg(struct msghdr *m, struct iovec *iov, char *ctl, size_t ctl_len) {
    memset(m, 0, sizeof *m);
    m->msg_iov = iov;
    m->msg_iovlen = 1;
    m->msg_control = ctl;
    m->msg_controllen = ctl_len;
}

/* in the child, just before exec: the filter; its listener goes to the parent over `sock` */
static int ov_install(int sock) {
    static const int calls[] = {OV_SYS_STAT, OV_SYS_FSTAT, OV_SYS_LSTAT, OV_SYS_NEWFSTATAT, OV_SYS_STATX,
                                OV_SYS_CHOWN, OV_SYS_FCHOWN, OV_SYS_LCHOWN, OV_SYS_FCHOWNAT};
    enum { NCALLS = sizeof calls / sizeof calls[0] };
    struct ov_sock_filter f[NCALLS + 8];
    int n = 0;
    f[n++] = (struct ov_sock_filter){0x20, 0, 0, 4};                    /* ld arch */
    f[n++] = (struct ov_sock_filter){0x15, 1, 0, OV_ARCH_X86_64};
    f[n++] = (struct ov_sock_filter){0x06, 0, 0, OV_RET_ALLOW};
    f[n++] = (struct ov_sock_filter){0x20, 0, 0, 0};                    /* ld nr */
    for (int i = 0; i < NCALLS; i++)
        f[n++] = (struct ov_sock_filter){0x15, (uint8_t)(NCALLS - i), 0, (uint32_t)calls[i]};
    f[n++] = (struct ov_sock_filter){0x06, 0, 0, OV_RET_ALLOW};
    f[n++] = (struct ov_sock_filter){0x06, 0, 0, OV_RET_NOTIF};
    struct ov_sock_fprog prog = {(unsigned short)n, f};
    int lfd = (int)syscall(SYS_seccomp, 1 /* SET_MODE_FILTER */, OV_NEW_LISTENER, &prog);
    if (lfd < 0) return -1;
    char dummy = 'l';
    struct iovec iov = {&dummy, 1};
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
    memset(&u, 0, sizeof u);
    struct msghdr m;
    fd_msg(&m, &iov, u.buf, sizeof u.buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &lfd, sizeof lfd);
    int r = sendmsg(sock, &m, 0) == 1 ? 0 : -1;
    int e = errno;
    close(lfd);
    errno = e;
    return r;
}

static int ov_recv_fd(int sock) {
    char dummy;
    struct iovec iov = {&dummy, 1};
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m;
    fd_msg(&m, &iov, u.buf, sizeof u.buf);
    if (recvmsg(sock, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) != 1) return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int))) return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static struct ov_entry *ov_table;
static size_t ov_n, ov_cap;
static int ov_lfd = -1, ov_unpriv;

static int ov_cmp(const void *a, const void *b) {
    const struct ov_entry *x = a, *y = b;
    if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
    if (x->dev != y->dev) return x->dev < y->dev ? -1 : 1;
    return 0;
}

static int ov_open(int dirfd, const char *path, int nofollow) {
    struct ov_how how = {(uint64_t)(O_PATH | O_CLOEXEC | (nofollow ? O_NOFOLLOW : 0)), 0,
                         OV_RESOLVE_IN_ROOT | OV_RESOLVE_NO_MAGICLINKS};
    return (int)syscall(OV_SYS_OPENAT2, dirfd, path, &how, sizeof how);
}

/* the table, from the child's root (after its mounts) */
static void ov_build(pid_t pid, struct plan *p) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/root", (int)pid);
    int root = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    ov_table = xmalloc(p->nowners * sizeof *ov_table);
    ov_n = 0;
    ov_cap = (size_t)p->nowners;
    for (int i = 0; root >= 0 && i < p->nowners; i++) {
        int fd = ov_open(root, p->owners[i].path, 1);
        struct stat st;
        if (fd < 0) continue;
        if (fstat(fd, &st) == 0) {
            ov_table[ov_n].dev = st.st_dev;
            ov_table[ov_n].ino = st.st_ino;
            ov_table[ov_n].uid = (uint32_t)strtoul(p->owners[i].uid, NULL, 10);
            ov_table[ov_n++].gid = (uint32_t)strtoul(p->owners[i].gid, NULL, 10);
        }
        close(fd);
    }
    if (root >= 0) close(root);
    qsort(ov_table, ov_n, sizeof *ov_table, ov_cmp);
}

static struct ov_entry *ov_find(uint64_t dev, uint64_t ino) {
    struct ov_entry key = {dev, ino, 0, 0};
    return bsearch(&key, ov_table, ov_n, sizeof *ov_table, ov_cmp);
}

/* record the view's owner of an inode (a chown the view answered); 0 when full */
static int ov_set(uint64_t dev, uint64_t ino, uint32_t uid, uint32_t gid) {
    struct ov_entry *e = ov_find(dev, ino);
    if (e) {
        e->uid = uid, e->gid = gid;
        return 1;
    }
    if (ov_n >= OV_MAX) return 0;
    if (ov_n == ov_cap) {
        size_t cap = ov_cap ? ov_cap * 2 : 64;
        struct ov_entry *t = realloc(ov_table, cap * sizeof *t);
        if (!t) return 0;
        ov_table = t, ov_cap = cap;
    }
    ov_table[ov_n++] = (struct ov_entry){dev, ino, uid, gid};
    qsort(ov_table, ov_n, sizeof *ov_table, ov_cmp);
    return 1;
}

/* the calling thread's file-system uid (as seen here) is the namespace's root: 1 */
static int ov_as_root(pid_t pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    const char *u = strstr(buf, "\nUid:");
    unsigned long r, e, sv, fs;
    if (!u || sscanf(u + 5, "%lu %lu %lu %lu", &r, &e, &sv, &fs) != 4) return 0;
    return fs == (ov_unpriv ? (unsigned long)getuid() : 0UL);
}

/* a chown of the file `st` (e: its view entry) to uid/gid ((uint32_t)-1: unchanged): 1 when the
   view answers it (the owner recorded; on disk only what chown(-1, -1) changes), 0: the kernel's
   answer. The view takes it when the file is in the view, or when one mapped id could not show the
   new owner (an unprivileged caller; only over the caller's own files: others are the kernel's
   EPERM), and the caller is the namespace's root (a guest process that changed its ids gets the
   kernel's answer). */
static int ov_chown(pid_t pid, const struct stat *st, struct ov_entry *e, uint32_t uid, uint32_t gid) {
    uint32_t cu = 0, cg = 0;
    if (!ov_as_root(pid)) return 0;
    if (e) {
        cu = e->uid, cg = e->gid;
    } else {
        if (!ov_unpriv) return 0;                           /* every id mapped: a real chown */
        if (st->st_uid != getuid() || st->st_gid != getgid()) return 0;
        if ((uid == (uint32_t)-1 || uid == 0) && (gid == (uint32_t)-1 || gid == 0)) return 0;
    }
    return ov_set(st->st_dev, st->st_ino, uid == (uint32_t)-1 ? cu : uid, gid == (uint32_t)-1 ? cg : gid);
}

/* the guest's NUL-terminated string at `addr` (page by page), 0 when read */
static int ov_read_str(pid_t pid, uint64_t addr, char *out, size_t cap) {
    size_t got = 0;
    while (got < cap) {
        size_t chunk = 4096 - ((addr + got) & 4095);
        if (chunk > cap - got) chunk = cap - got;
        struct iovec l = {out + got, chunk}, r = {(void *)(uintptr_t)(addr + got), chunk};
        ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (n <= 0) return -1;
        if (memchr(out + got, 0, (size_t)n)) return 0;
        got += (size_t)n;
    }
    return -1;
}

/* one notification: 1 when answered here (the guest's buffer written), 0: continue */
static int ov_answer(struct ov_notif *req) {
    struct ov_data *d = &req->data;
    if (d->arch != OV_ARCH_X86_64) return 0;
    pid_t pid = (pid_t)req->pid;
    int nr = d->nr, dirfd = AT_FDCWD, flags = 0, is_statx = nr == OV_SYS_STATX, is_chown = 0;
    uint64_t pathp = 0, buf = 0, mask = 0;
    uint32_t nuid = 0, ngid = 0;
    switch (nr) {
    case OV_SYS_STAT: case OV_SYS_LSTAT:
        pathp = d->args[0]; buf = d->args[1]; flags = nr == OV_SYS_LSTAT ? AT_SYMLINK_NOFOLLOW : 0; break;
    case OV_SYS_FSTAT:
        dirfd = (int)d->args[0]; buf = d->args[1]; flags = AT_EMPTY_PATH; break;
    case OV_SYS_NEWFSTATAT:
        dirfd = (int)d->args[0]; pathp = d->args[1]; buf = d->args[2]; flags = (int)d->args[3]; break;
    case OV_SYS_STATX:
        dirfd = (int)d->args[0]; pathp = d->args[1]; flags = (int)d->args[2]; mask = d->args[3];
        buf = d->args[4]; break;
    case OV_SYS_CHOWN: case OV_SYS_LCHOWN:
        pathp = d->args[0]; nuid = (uint32_t)d->args[1]; ngid = (uint32_t)d->args[2];
        flags = nr == OV_SYS_LCHOWN ? AT_SYMLINK_NOFOLLOW : 0; is_chown = 1; break;
    case OV_SYS_FCHOWN:
        dirfd = (int)d->args[0]; nuid = (uint32_t)d->args[1]; ngid = (uint32_t)d->args[2];
        flags = AT_EMPTY_PATH; is_chown = 1; break;
    case OV_SYS_FCHOWNAT:
        dirfd = (int)d->args[0]; pathp = d->args[1]; nuid = (uint32_t)d->args[2]; ngid = (uint32_t)d->args[3];
        flags = (int)d->args[4]; is_chown = 1; break;
    default: return 0;
    }
    char path[PATH_MAX + 1], base[PATH_MAX + 64], link[PATH_MAX + 1];
    path[0] = 0;
    if (pathp && ov_read_str(pid, pathp, path, sizeof path) < 0) return 0;
    if (!pathp && !(flags & AT_EMPTY_PATH)) return 0;      /* (NULL with AT_EMPTY_PATH: 6.11+) */
    if (!path[0] && !(flags & AT_EMPTY_PATH)) return 0;
    int fd = -1;
    if (!path[0]) {                                 /* the dirfd (or cwd) itself */
        if (dirfd == AT_FDCWD) snprintf(base, sizeof base, "/proc/%d/cwd", (int)pid);
        else if (dirfd < 0) return 0;
        else snprintf(base, sizeof base, "/proc/%d/fd/%d", (int)pid, dirfd);
        fd = open(base, O_PATH | O_CLOEXEC);
    } else {
        snprintf(base, sizeof base, "/proc/%d/root", (int)pid);
        int root = open(base, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (root < 0) return 0;
        const char *full = path;
        char *joined = NULL;
        if (path[0] != '/') {                       /* the guest path of the dirfd or cwd */
            if (dirfd == AT_FDCWD) snprintf(base, sizeof base, "/proc/%d/cwd", (int)pid);
            else if (dirfd < 0) { close(root); return 0; }
            else snprintf(base, sizeof base, "/proc/%d/fd/%d", (int)pid, dirfd);
            ssize_t l = readlink(base, link, sizeof link - 1);
            if (l <= 0 || link[0] != '/') { close(root); return 0; }
            link[l] = 0;
            joined = cat(link, "/", path);
            full = joined;
        }
        fd = ov_open(root, full, (flags & AT_SYMLINK_NOFOLLOW) != 0);
        free(joined);
        close(root);
    }
    if (fd < 0) return 0;
    struct stat st;
    int have = fstat(fd, &st) == 0;
    struct ov_entry *e = have ? ov_find(st.st_dev, st.st_ino) : NULL;
    int done = 0;
    if (is_chown) {
        done = have ? ov_chown(pid, &st, e, nuid, ngid) : 0;
        /* the rest of a chown, as the kernel's own would do it: set-user-ID gone, set-group-ID
           with group execute gone (not on directories); the ptrace rungs' chown(-1, -1) does this */
        if (done) (void)fchownat(fd, "", (uid_t)-1, (gid_t)-1, AT_EMPTY_PATH);
    } else if (e) {
        unsigned char out[256];
        size_t len;
        if (is_statx) {
            memset(out, 0, sizeof out);
            if (syscall(OV_SYS_STATX, fd, "", AT_EMPTY_PATH | (flags & OV_AT_STATX_SYNC_TYPE), (unsigned)mask, out) < 0) goto out;
            memcpy(out + 20, &e->uid, 4);           /* stx_uid, stx_gid */
            memcpy(out + 24, &e->gid, 4);
            len = 256;
        } else {
            st.st_uid = e->uid;
            st.st_gid = e->gid;
            memcpy(out, &st, sizeof st);
            len = sizeof st;
        }
        if (ioctl(ov_lfd, OV_ID_VALID, &req->id) < 0) goto out;
        struct iovec l = {out, len}, r = {(void *)(uintptr_t)buf, len};
        done = process_vm_writev(pid, &l, 1, &r, 1, 0) == (ssize_t)len;
    }
out:
    close(fd);
    return done;
}

static void *ov_serve(void *arg) {
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);     /* the forwarder's signals go to the main thread */
    for (;;) {
        struct ov_notif req;
        memset(&req, 0, sizeof req);
        if (ioctl(ov_lfd, OV_RECV, &req) < 0) {
            if (errno == EINTR || errno == ENOENT) continue;
            break;
        }
        struct ov_resp resp = {req.id, 0, 0, OV_CONTINUE};
        if (ov_answer(&req)) resp.flags = 0;
        (void)ioctl(ov_lfd, OV_SEND, &resp);
    }
    return NULL;
}

/* in the parent, once the child exec'd: the listener, the table, the thread */
static void ov_start(int sock, pid_t pid, struct plan *p) {
    ov_lfd = ov_recv_fd(sock);
    if (ov_lfd < 0) {                   /* (the guest would block on its first stat) */
        say("carryon: internal error: no owner view listener\n");
        kill(pid, SIGKILL);
        return;
    }
    /* SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (6.6+; the flags by value) */
    (void)ioctl(ov_lfd, 0x40082104UL, 1UL);
    ov_unpriv = getuid() != 0;
    ov_build(pid, p);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 << 10);
    if (pthread_create(&t, &at, ov_serve, NULL) != 0) {
        /* the guest would block on its first stat: no run without the view */
        say("carryon: internal error: owner view thread\n");
        kill(pid, SIGKILL);
    }
}

/* ---------------------------------------------------------------- the child */
struct child_args {
    struct plan *p;
    char **argv, **envp;
    const char *ov[4];              /* lower upper work root (NULL: bind the rootfs) */
    char **bind_hosts;              /* per bind: the host source to use (NULL: skipped) */
    int go_r, err_w;
    int ov_sock;                    /* the owner view's listener goes there (-1: no view) */
    pid_t parent;
};

static void report(int fd, const char *kind, const char *msg) {
    char *s = cat(kind, " ", msg);
    (void)write_all(fd, s, strlen(s));
}

static const char *env_get(char **envp, const char *name) {
    size_t n = strlen(name);
    for (; *envp; envp++)
        if (!strncmp(*envp, name, n) && (*envp)[n] == '=') return *envp + n + 1;
    return NULL;
}

/* runtime.engine.find_command's check: 0 ok, 1 missing, 2 not executable */
static int check_cmd(const char *guest, const char *cwd) {
    char *host = guest[0] == '/' ? strdup(guest) : cat(cwd, strcmp(cwd, "/") ? "/" : "", guest);
    struct stat st;
    int r = 0;
    if (!host) return 1;
    if (stat(host, &st) < 0) r = errno == EACCES ? 2 : 1;
    else if (!S_ISREG(st.st_mode) || access(host, X_OK) < 0) r = 2;
    free(host);
    return r;
}

static void fail(struct child_args *a, const char *stage, const char *what, int e) {
    char msg[PATH_MAX + 256];
    snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
    report(a->err_w, stage, msg);
    _exit(125);
}

static void child(struct child_args *a) {
    struct plan *p = a->p;
    for (int s = 1; s < 65; s++)
        if (s != SIGKILL && s != SIGSTOP) (void)ksig(s, SIG_DFL);
    uint64_t none = 0;
    (void)syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != a->parent) _exit(125);
    /* born in the new namespaces: the parent writes the maps ("m", or "xERRNO") */
    char answer[17];
    ssize_t n;
    while ((n = read(a->go_r, answer, 1)) < 0 && errno == EINTR) {}
    if (n <= 0 || answer[0] != 'm') {
        ssize_t more = n > 0 && answer[0] == 'x' ? read(a->go_r, answer + 1, 15) : 0;
        answer[1 + (more > 0 ? more : 0)] = 0;
        fail(a, "refused", "writing the id maps", answer[0] == 'x' ? atoi(answer + 1) : 0);
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) fail(a, "refused", "mount /", errno);
    const char *root;
    if (a->ov[0]) {
        char *opts = xmalloc(strlen(a->ov[0]) + strlen(a->ov[1]) + strlen(a->ov[2]) + 64);
        sprintf(opts, "lowerdir=%s,upperdir=%s,workdir=%s,userxattr", a->ov[0], a->ov[1], a->ov[2]);
        root = a->ov[3];
        if (mount("overlay", root, "overlay", 0, opts) < 0) {
            opts[strlen(opts) - strlen(",userxattr")] = 0;
            if (mount("overlay", root, "overlay", 0, opts) < 0) {
                char what[PATH_MAX + 16];
                snprintf(what, sizeof what, "mount %s", root);
                fail(a, "refused", what, errno);
            }
        }
    } else {
        root = p->rootfs;
        if (mount(root, root, NULL, MS_BIND | MS_REC, NULL) < 0) {
            char what[PATH_MAX + 16];
            snprintf(what, sizeof what, "mount %s", root);
            fail(a, "refused", what, errno);
        }
    }
    for (int i = 0; i < p->nbinds; i++) {
        const char *host = a->bind_hosts[i];
        if (!host) continue;
        struct stat st;
        char kind = stat(host, &st) == 0 && S_ISDIR(st.st_mode) ? 'd' : 'f';
        char *target = resolve(root, p->binds[i].guest, kind);
        char what[PATH_MAX + 64];
        if (!target) {
            snprintf(what, sizeof what, "mount point %s", p->binds[i].guest);
            report(a->err_w, "refused", cat(what, ": missing in the rootfs", ""));
            _exit(125);
        }
        snprintf(what, sizeof what, "mount %s", target);
        if (mount(host, target, NULL, MS_BIND | MS_REC, NULL) < 0) fail(a, "refused", what, errno);
        if (strchr(p->binds[i].flags, 'r')) {
            unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY;
            struct statvfs sv;
            if (statvfs(target, &sv) == 0) {
                if (sv.f_flag & ST_NOSUID) flags |= MS_NOSUID;
                if (sv.f_flag & ST_NODEV) flags |= MS_NODEV;
                if (sv.f_flag & ST_NOEXEC) flags |= MS_NOEXEC;
                if (sv.f_flag & ST_NOATIME) flags |= MS_NOATIME;
                if (sv.f_flag & ST_NODIRATIME) flags |= MS_NODIRATIME;
                if (sv.f_flag & ST_RELATIME) flags |= MS_RELATIME;
            }
            if (mount(NULL, target, NULL, flags, NULL) < 0) fail(a, "refused", what, errno);
        }
        free(target);
    }
    if (chdir(root) < 0) fail(a, "refused", "chdir", errno);
    if (syscall(SYS_pivot_root, ".", ".") == 0) {
        if (umount2(".", MNT_DETACH) < 0) fail(a, "refused", "umount the old root", errno);
    } else if (chroot(".") < 0) {
        fail(a, "refused", "chroot", errno);
    }
    if (chdir("/") < 0) fail(a, "refused", "chdir /", errno);
    /* the guest's root is set: what fails now is no refusal */
    const char *cwd = p->cwd[0] ? p->cwd : "/";
    struct stat st;
    if (stat(cwd, &st) < 0 || !S_ISDIR(st.st_mode)) {
        int made = 0;
        if (p->cwd_make[0] == '1') {
            char *path = strdup(cwd);
            if (path) {
                for (char *s = path + 1;; s++) {
                    if (*s == '/' || !*s) {
                        char c = *s;
                        *s = 0;
                        if (mkdir(path, 0755) < 0 && errno != EEXIST) break;
                        *s = c;
                        if (!c) { made = 1; break; }
                    }
                }
                free(path);
            }
            made = made && stat(cwd, &st) == 0 && S_ISDIR(st.st_mode);
        }
        if (!made) {
            if (p->cwd_warn[0] == '1') {
                int dq = strchr(cwd, '\'') && !strchr(cwd, '"');
                char *m = cat("carryon: warning: can't chdir to ", dq ? "\"" : "'", cwd);
                say(m);
                say(dq ? "\" in the guest, using '/'\n" : "' in the guest, using '/'\n");
            }
            cwd = "/";
        }
    }
    if (chdir(cwd) < 0) fail(a, "error", "chdir", errno);
    if (geteuid() == 0 && p->ids_uid && (atol(p->ids_uid) || atol(p->ids_gid))) {
        gid_t gid = (gid_t)atol(p->ids_gid);
        uid_t uid = (uid_t)atol(p->ids_uid);
        if (setgroups(1, &gid) < 0) fail(a, "error", "setgroups", errno);
        if (setresgid(gid, gid, gid) < 0) fail(a, "error", "setresgid", errno);
        if (setresuid(uid, uid, uid) < 0) fail(a, "error", "setresuid", errno);
    }
    const char *argv0 = a->argv[0] ? a->argv[0] : "";
    const char *prog = NULL;
    if (!argv0[0]) {
        report(a->err_w, "notfound", "empty command");
        _exit(127);
    }
    if (strchr(argv0, '/')) {
        int r = check_cmd(argv0, cwd);
        if (r == 1) { report(a->err_w, "notfound", cat(argv0, ": no such file or directory in the guest", "")); _exit(127); }
        if (r == 2) { report(a->err_w, "notexec", cat(argv0, ": permission denied (not an executable file)", "")); _exit(126); }
        prog = argv0;
    } else {
        const char *path = env_get(a->envp, "PATH");
        char *dirs = strdup(path ? path : DEFAULT_PATH);
        if (!dirs) _exit(125);
        char *save = dirs;
        for (;;) {
            char *colon = strchr(save, ':');
            if (colon) *colon = 0;
            char *cand;
            if (*save) {                    /* (d.rstrip("/") or "") + "/" + argv0 */
                size_t dl = strlen(save);
                while (dl > 0 && save[dl - 1] == '/') save[--dl] = 0;
                cand = cat(save, "/", argv0);
            } else {
                cand = strdup(argv0);       /* an empty entry: the cwd */
            }
            if (cand && check_cmd(cand, cwd) == 0) {
                prog = cand[0] == '/' ? cand : cat("./", cand, "");
                break;
            }
            free(cand);
            if (!colon) break;
            save = colon + 1;
        }
        if (!prog) {
            report(a->err_w, "notfound", cat(argv0, ": executable file not found in the guest's $PATH", ""));
            _exit(127);
        }
    }
    /* the parent is the guests' subreaper now, with its watchdog ("g") */
    while ((n = read(a->go_r, answer, 1)) < 0 && errno == EINTR) {}
    if (n != 1 || answer[0] != 'g') _exit(125);
    if (a->ov_sock >= 0 && ov_install(a->ov_sock) < 0) fail(a, "refused", "seccomp user notification (owner view)", errno);
    execve(prog, a->argv, a->envp);
    char num[32];
    snprintf(num, sizeof num, "%d", errno);
    int code = errno == ENOENT ? 127 : 126;
    report(a->err_w, "exec", num);
    _exit(code);
}

/* ---------------------------------------------------------------- the watchdog (userns._NsWatchdog) */
static void ns_watch(int fd) {
    int s;
    for (s = 1; s < 65; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        signal(s, (s == SIGINT || s == SIGTERM || s == SIGHUP || s == SIGQUIT || s == SIGTSTP) ? SIG_IGN : SIG_DFL);
    }
    if (fd <= 2) {
        int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        fd = nfd;
    }
    int null = open("/dev/null", O_RDWR);
    for (s = 0; s < 3; s++)
        if (null >= 0) dup2(null, s);
    for (s = 3; s < 1024; s++)
        if (s != fd) close(s);
    size_t len = 0;
    char *got = read_fd(fd, &len, 1 << 16);
    if (!got || len == 0 || got[0] != 'N' || memchr(got, 'E', len)) _exit(0);
    char *nl = strchr(got, '\n');
    if (nl) *nl = 0;
    const char *ns = got + 1;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t me = getpid();
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec >= 5) break;
        DIR *d = opendir("/proc");
        if (!d) break;
        int found = 0;
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
            pid_t pid = (pid_t)atoi(de->d_name);
            if (pid == me) continue;
            char path[64], link[256];
            snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
            ssize_t l = readlink(path, link, sizeof link - 1);
            if (l < 0) continue;
            link[l] = 0;
            if (strcmp(link, ns)) continue;
            if (kill(pid, SIGKILL) == 0) found = 1;
        }
        closedir(d);
        if (!found) break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    _exit(0);
}

static int watchdog_start(void) {
    int pp[2];
    if (pipe2(pp, O_CLOEXEC) < 0) return -1;
    pid_t c = fork();
    if (c == 0) {
        close(pp[1]);
        if (fork() == 0) ns_watch(pp[0]);
        _exit(0);
    }
    close(pp[0]);
    if (c < 0) { close(pp[1]); return -1; }
    while (waitpid(c, NULL, 0) < 0 && errno == EINTR) {}
    return pp[1];
}

/* ---------------------------------------------------------------- the parent */
static volatile pid_t fwd_pid;
static int fwd_stop = SIGTERM, fwd_tty;

static void forward(int sig) {
    if (fwd_tty && (sig == SIGINT || sig == SIGQUIT || sig == SIGWINCH)) return;
    int save = errno;
    kill(fwd_pid, sig == SIGTERM ? fwd_stop : sig);
    errno = save;
}

static int not_forwarded(int s) {
    static const int no[] = {SIGKILL, SIGSTOP, SIGCHLD, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU, SIGPIPE,
                             SIGXFSZ, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, 64};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (no[i] == s) return 1;
    return 0;
}

static void install_forwarder(pid_t pid, struct plan *p) {
    fwd_pid = pid;
    fwd_stop = p->stop_sig;
    for (int fd = 0; fd < 3; fd++)
        if (isatty(fd) && tcgetpgrp(fd) == getpgrp()) { fwd_tty = 1; break; }
    if (p->fwd_all) {                   /* (32 and 33: glibc's own, never Python's to forward) */
        for (int s = 1; s < 65; s++)
            if (!not_forwarded(s) && s != 32 && s != 33) (void)ksig(s, forward);
    } else {
        int some[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
        for (int i = 0; i < 4; i++) (void)ksig(some[i], forward);
    }
}

static int proc_ids(pid_t pid, pid_t *ppid, pid_t *pgrp, pid_t *sid, char *state) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *r = strrchr(buf, ')');
    if (!r) return -1;
    char st;
    int a, b, c;
    if (sscanf(r + 1, " %c %d %d %d", &st, &a, &b, &c) != 4) return -1;
    *ppid = a, *pgrp = b, *sid = c;
    if (state) *state = st;
    return 0;
}

/* runtime.userns._hang_up_orphans with runtime.tracee.loop's orphaned_group and hang_up */
static void hang_up_orphans(void) {
    siginfo_t si;                       /* no child (no guest left): no /proc walk */
    memset(&si, 0, sizeof si);
    if (waitid(P_ALL, 0, &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT) < 0 && errno == ECHILD) return;
    pid_t me = getpid(), pgrp = getpgrp(), sid = getsid(0);
    DIR *d = opendir("/proc");
    if (!d) return;
    pid_t *members = NULL;
    size_t n = 0, cap = 0;
    int stopped = 0, orphaned = 1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
        pid_t pid = (pid_t)atoi(de->d_name), ppid, g, s;
        char st;
        if (pid == me || proc_ids(pid, &ppid, &g, &s, &st) < 0 || g != pgrp) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            pid_t *m = realloc(members, cap * sizeof *m);
            if (!m) break;
            members = m;
        }
        members[n++] = pid;
        if (st == 'T' || st == 't') stopped = 1;
        if (ppid != me) {
            pid_t pp, pg, ps;
            if (proc_ids(ppid, &pp, &pg, &ps, NULL) == 0 && pg != pgrp && pg != 0 && ps == sid) {
                orphaned = 0;
                break;
            }
        }
    }
    closedir(d);
    if (orphaned && stopped) {
        for (size_t i = 0; i < n; i++) kill(members[i], SIGHUP);
        for (size_t i = 0; i < n; i++) kill(members[i], SIGCONT);
    }
    free(members);
}

static int children(pid_t *out, int max) {
    char path[64];
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/task", (int)getpid());
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && n < max) {
        if (de->d_name[0] == '.') continue;
        char p2[400];
        snprintf(p2, sizeof p2, "%s/%s/children", path, de->d_name);
        int fd = open(p2, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        size_t len;
        char *buf = read_fd(fd, &len, 1 << 20);
        close(fd);
        if (!buf) continue;
        for (char *s = buf; *s && n < max;) {
            char *e;
            long v = strtol(s, &e, 10);
            if (e == s) break;
            out[n++] = (pid_t)v;
            s = e;
        }
        free(buf);
    }
    closedir(d);
    return n;
}

static int wait_run(pid_t main_pid, int wait_all) {
    int status = 0, have = 0, flags = 0;
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, flags);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pid == main_pid && !have && !WIFSTOPPED(st)) {
            status = st;
            have = 1;
            if (!wait_all) break;
            flags = WUNTRACED;
            hang_up_orphans();
        } else if (have && WIFSTOPPED(st)) {
            hang_up_orphans();
        }
    }
    if (!wait_all) {
        pid_t kids[4096];
        for (;;) {
            int n = children(kids, 4096);
            if (!n) break;
            for (int i = 0; i < n; i++) kill(kids[i], SIGKILL);
            for (int i = 0; i < n; i++)
                while (waitpid(-1, NULL, 0) < 0 && errno == EINTR) {}
        }
    }
    return status;
}

/* ---------------------------------------------------------------- the run */
struct run_ctx {
    struct plan *p;
    const char *fallback_exe;       /* exec'd on a refusal, with: */
    char **fallback;
    char **fallback_env;
    char **argv, **envp;
    const char *ov[4];
    char **bind_hosts;
    const char *state;              /* the overlay's state dir (unmade on a refusal) */
    const char **remove;            /* removed at the end */
    int nremove;
    int detach;                     /* ... by a process of its own, once the status is known */
    int held_ns;                    /* 1 + a descriptor of the run's mount namespace, or 0 */
};

static void unmake_state(const char *state) {
    static const char *dirs[] = {"ns-upper", "ns-work/work", "ns-work", "ns-root"};
    for (int i = 0; i < 4; i++) {
        char *d = cat(state, "/", dirs[i]);
        int r = rmdir(d);
        free(d);
        if (r < 0 && errno != ENOENT) return;
    }
    char *m = cat(state, "/", "ns-overlay");
    (void)unlink(m);
    free(m);
}

static void tidy_work(const char *work) {
    DIR *d = opendir(work);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        (void)unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR);
    }
    closedir(d);
}

/* The mount namespace is torn down (the overlay unmounted, which syncs its upper file system, and
   an RCU grace period per unmount batch: ~4 ms on these machines) when its last reference goes. The
   parent holds one (`held_ns`) so that the guest's exit does not pay for it: the warm start's
   cleaner drops it after the caller has its status; other runs drop it here, before the removal
   (the overlay's directories are busy while it is mounted). */
static void release_ns(struct run_ctx *c) {
    if (c->held_ns) close(c->held_ns - 1);
    c->held_ns = 0;
}

static void finish(struct run_ctx *c) {
    release_ns(c);
    if (c->ov[0]) {
        char *w = xmalloc(strlen(c->ov[2]) + 1);
        strcpy(w, c->ov[2]);
        tidy_work(w);
        free(w);
    }
    for (int i = 0; i < c->nremove; i++) remove_tree(c->remove[i]);
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = write_all(fd, text, strlen(text));
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

static void write_maps(pid_t pid, struct plan *p, int go_w) {
    char path[64];
    int ok = 1;
    if (p->setgroups && p->setgroups[0] == '1') {
        snprintf(path, sizeof path, "/proc/%d/setgroups", (int)pid);
        ok = write_file(path, "deny") == 0;
    }
    if (ok) {
        snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
        ok = write_file(path, p->uid_map) == 0;
    }
    if (ok) {
        snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
        ok = write_file(path, p->gid_map) == 0;
    }
    if (ok) {
        (void)write_all(go_w, "m", 1);
    } else {
        char b[32];
        snprintf(b, sizeof b, "x%d", errno);
        (void)write_all(go_w, b, strlen(b));
    }
}

static void refused(struct run_ctx *c, const char *why) {
    if (c->state) unmake_state(c->state);
    finish(c);
    if (c->fallback_exe && c->fallback && c->fallback[0]) {
        size_t n = 0;
        while (c->fallback_env[n]) n++;
        char **env = xmalloc((n + 2) * sizeof *env);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (strncmp(c->fallback_env[i], REFUSED_ENV "=", sizeof REFUSED_ENV)) env[k++] = c->fallback_env[i];
        char *w = cat(REFUSED_ENV, "=", why);
        for (char *s = w; *s; s++)
            if (*s == '\n') *s = ' ';
        env[k++] = w;
        env[k] = NULL;
        execve(c->fallback_exe, c->fallback, env);
    }
    say(cat(c->p->prefix, ": user namespace refused: ", why));
    say("\n");
    _exit(125);
}

static int run(struct run_ctx *c) {
    struct plan *p = c->p;
    int go[2], er[2];
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(go, O_CLOEXEC) < 0 || pipe2(er, O_CLOEXEC) < 0) refused(c, "pipe");
    int ovs[2] = {-1, -1};
    if (p->nowners && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ovs) < 0) refused(c, "socketpair");
    struct child_args a;
    memset(&a, 0, sizeof a);
    a.p = p;
    a.argv = c->argv;
    a.envp = c->envp;
    for (int i = 0; i < 4; i++) a.ov[i] = c->ov[i];
    a.bind_hosts = c->bind_hosts;
    a.go_r = go[0], a.err_w = er[1];
    a.ov_sock = ovs[1];
    a.parent = getpid();
    /* a fork whose child starts in a new user + mount namespace (runtime.userns: unshare in the
       child; the same refusals); the parent writes its maps at once, then, while the child mounts,
       makes the watchdog (before we are a subreaper: it must not come back to us) */
    pid_t pid = (pid_t)syscall(SYS_clone, (unsigned long)(SIGCHLD | CLONE_NEWUSER | CLONE_NEWNS), NULL, NULL, NULL, 0);
    if (pid < 0) {
        char why[256];
        snprintf(why, sizeof why, "unshare: %s", strerror(errno));
        refused(c, why);
    }
    if (pid == 0) child(&a);
    close(go[0]);
    close(er[1]);
    if (ovs[1] >= 0) close(ovs[1]);
    write_maps(pid, p, go[1]);
    int dog = watchdog_start();
    {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)pid);
        int nsfd = open(path, O_RDONLY | O_CLOEXEC);   /* none: the guest's exit tears it down */
        if (nsfd >= 0) c->held_ns = nsfd + 1;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    (void)write_all(go[1], "g", 1);
    close(go[1]);
    install_forwarder(pid, p);
    size_t len = 0;
    char *rep = read_fd(er[0], &len, 1 << 16);
    close(er[0]);
    if (rep && len) {
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
        if (dog >= 0) close(dog);
        prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
        char *msg = strchr(rep, ' ');
        if (msg) *msg++ = 0; else msg = "";
        int code = 125;
        char *line;
        if (!strcmp(rep, "refused")) refused(c, msg);
        if (!strcmp(rep, "notfound")) { code = 127; line = msg; }
        else if (!strcmp(rep, "notexec")) { code = 126; line = msg; }
        else if (!strcmp(rep, "exec")) {
            int e = atoi(msg);
            code = e == ENOENT ? 127 : 126;
            line = cat(c->argv[0], ": ", strerror(e));
        } else line = cat("engine failure: ", msg, "");
        finish(c);
        say(cat(p->prefix, ": ", line));
        say("\n");
        return code;
    }
    if (ovs[0] >= 0) {
        ov_start(ovs[0], pid, p);
        close(ovs[0]);
    }
    if (dog >= 0) {
        char path[64], link[256];
        snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
        ssize_t l = readlink(path, link, sizeof link - 1);
        if (l > 0) {
            link[l] = 0;
            char *m = cat("N", link, "\n");
            (void)write_all(dog, m, strlen(m));
        }
    }
    int st = wait_run(pid, p->wait_all);
    if (dog >= 0) {
        (void)write_all(dog, "E", 1);
        close(dog);
    }
    prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
    /* the warm start: the caller gets the status now; the namespace's teardown and the removal go on
       in a process of its own that holds none of the caller's descriptors (nobody waits for it); it
       drops the namespace only once this process has dropped its own reference (`after`) */
    int after[2] = {-1, -1};
    if (c->detach && pipe2(after, O_CLOEXEC) < 0) after[0] = after[1] = -1;
    pid_t cleaner = c->detach ? fork() : -1;
    if (cleaner == 0) {
        if (after[0] >= 0) {
            char x;
            close(after[1]);
            while (read(after[0], &x, 1) < 0 && errno == EINTR) {}
        }
        setsid();
        int null = open("/dev/null", O_RDWR);
        for (int fd = 0; fd < 3; fd++)
            if (null >= 0) dup2(null, fd);
        for (int fd = 3; fd < 1024; fd++) close(fd);
        finish(c);
        _exit(0);
    }
    if (cleaner > 0) {
        release_ns(c);                                  /* the cleaner's copy is the last one */
        if (after[0] >= 0) close(after[0]);
        if (after[1] >= 0) close(after[1]);             /* the cleaner goes on (EOF) */
    } else {
        if (after[0] >= 0) { close(after[0]); close(after[1]); }
        finish(c);
    }
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return 125;
}

/* the node name as runtime.cache.hostname gives it (uname; "localhost" when empty or unusual) */
static void host_name(char *out, size_t n) {
    struct utsname u;
    const char *name = uname(&u) == 0 && u.nodename[0] ? u.nodename : "localhost";
    for (const char *s = name; *s; s++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", *s)) {
            name = "localhost";
            break;
        }
    snprintf(out, n, "%s", name);
}

/* the guest's environment from the plan's records (a later K replaces an earlier one in place) */
static char **build_env(struct plan *p) {
    char **env = xmalloc((p->nenv + 1) * sizeof *env);
    int n = 0;
    for (int i = 0; i < p->nenv; i++) {
        char *item = NULL;
        const char *t = p->env[i].text;
        if (p->env[i].kind == '=') item = (char *)t;
        else if (p->env[i].kind == 'h') {
            const char *v = getenv(t);
            if (!v || !v[0]) continue;          /* runspec._host_env: set and not empty (TERM) */
            item = cat(t, "=", v);
        } else {
            char name[256];
            host_name(name, sizeof name);
            item = cat(t, "=", name);
        }
        const char *eq = strchr(item, '=');
        size_t kl = eq ? (size_t)(eq - item) : strlen(item);
        int j;
        for (j = 0; j < n; j++)
            if (!strncmp(env[j], item, kl) && env[j][kl] == '=') break;
        env[j] = item;
        if (j == n) n++;
    }
    env[n] = NULL;
    return env;
}

/* ---------------------------------------------------------------- --plan FD */
static int from_python(int fd) {
    (void)lseek(fd, 0, SEEK_SET);
    size_t len;
    char *buf = read_fd(fd, &len, 64 << 20);
    close(fd);
    struct plan p;
    if (!buf || parse_plan(buf, len, &p) < 0) {
        say("carryon: internal error: a malformed plan for carryon-nsrun\n");
        return 125;
    }
    struct run_ctx c;
    memset(&c, 0, sizeof c);
    c.p = &p;
    c.fallback_exe = p.fexe;
    c.fallback = (char **)p.fargv;
    c.fallback_env = (char **)p.fenv;
    c.argv = (char **)p.argv;
    c.envp = build_env(&p);
    for (int i = 0; i < 4; i++) c.ov[i] = p.ov[0] ? p.ov[i] : NULL;
    c.bind_hosts = xmalloc((p.nbinds + 1) * sizeof *c.bind_hosts);
    for (int i = 0; i < p.nbinds; i++) c.bind_hosts[i] = (char *)p.binds[i].host;
    c.state = p.unmake;
    c.remove = p.remove;
    c.nremove = p.nremove;
    return run(&c);
}

/* ---------------------------------------------------------------- --warm N LAUNCH... ARGS... */
static char **launch;               /* the Python runtime's command line, ARGS appended */

static void python(void) {
    execve(launch[0], launch, environ);
    say("carryon: cannot start the runtime\n");
    _exit(125);
}

static const char *status_field(const char *buf, const char *name) {
    const char *s = strstr(buf, name);
    return s ? s + strlen(name) : NULL;
}


/* runtime.launch.install.reap_dead_runs: this host's run dirs of this archive whose process died */
static void reap_dead_runs(const char *cache_dir, const char *key, const char *host) {
    DIR *d = opendir(cache_dir);
    if (!d) return;
    char *prefix = cat(".run-", key, "-");
    size_t pl = strlen(prefix), hl = strlen(host);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (strncmp(n, prefix, pl)) continue;
        const char *rest = n + pl;
        const char *last = strrchr(rest, '-');
        if (!last || last == rest) continue;
        const char *mid = last - 1;
        while (mid > rest && *mid != '-') mid--;
        if (*mid != '-' || (size_t)(mid - rest) != hl || strncmp(rest, host, hl)) continue;
        char *e;
        long pid = strtol(mid + 1, &e, 10);
        if (e != last || pid <= 0 || pid == getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno == EPERM) continue;
        struct stat st;
        /* (one left in the last seconds may still be being removed by its run's own cleaner) */
        if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid == getuid() &&
            st.st_ctime < time(NULL) - 5) {
            char *p = cat(cache_dir, "/", n);
            remove_tree(p);
            free(p);
        }
    }
    closedir(d);
    free(prefix);
}

static char *make_run_dir(const char *cache_dir, const char *key, const char *host) {
    const char *tmp = getenv("TMPDIR");
    const char *places[] = {cache_dir, tmp && tmp[0] ? tmp : "/tmp", "/tmp"};
    unsigned seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 100; k++) {
            char name[PATH_MAX];
            seed = seed * 1103515245u + 12345u;
            snprintf(name, sizeof name, "%s/.run-%s-%s-%d-%08x", places[i], key, host, (int)getpid(), seed);
            if (mkdir(name, 0700) == 0) return strdup(name);
            if (errno != EEXIST) break;
        }
    }
    return NULL;
}

static int file_owned(const char *path, int dir) {
    struct stat st;
    if (lstat(path, &st) < 0) return 0;
    if (dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) return 0;
    return st.st_uid == getuid() && !(st.st_mode & 022);
}

static int warm(int argc, char **argv) {
    if (argc < 3) return 125;
    int nl = atoi(argv[2]);
    if (nl < 1 || nl > argc - 3) return 125;
    char **args = argv + 3 + nl;
    int nargs = argc - 3 - nl;
    launch = xmalloc((size_t)(nl + nargs + 1) * sizeof *launch);
    for (int i = 0; i < nl + nargs; i++) launch[i] = argv[3 + i];
    launch[nl + nargs] = NULL;
    /* a plain run only */
    if (nargs > 0 && !strncmp(args[0], "--carryon-", 10)) python();
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "CARRYON_", 8)) continue;
        if (!strncmp(*e, "CARRYON_CACHE=", 14)) continue;
        if (!strcmp(*e, "CARRYON_ENGINE=") || !strcmp(*e, "CARRYON_ENGINE=auto") || !strcmp(*e, "CARRYON_ENGINE=userns"))
            continue;
        python();
    }
    const char *archive = getenv("_CARRYON_ARCHIVE"), *rt = getenv("_CARRYON_RT");
    const char *published = getenv("_CARRYON_RT_PUBLISHED");
    if (!archive || !rt || !published || strcmp(published, "1") || getenv(REFUSED_ENV)) python();
    int sfd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (sfd < 0) python();
    size_t slen;
    char *status = read_fd(sfd, &slen, 1 << 16);
    close(sfd);
    const char *sc = status ? status_field(status, "\nSeccomp:") : NULL;
    const char *tp = status ? status_field(status, "\nTracerPid:") : NULL;
    if (!sc || !tp || atoi(sc) != 0 || atoi(tp) != 0) python();
    /* the archive: its trailer's hash is the key */
    int afd = open(archive, O_RDONLY | O_CLOEXEC);
    struct stat ast;
    if (afd < 0 || fstat(afd, &ast) < 0 || ast.st_size < 512) python();
    unsigned char trailer[512];
    if (pread(afd, trailer, 512, ast.st_size - 512) != 512) python();
    char digest[65];
    sha256_hex(trailer, 512, digest);
    digest[32] = 0;
    /* the plan: beside the runtime dir, a regular file of ours nobody else can write */
    char host[256];
    host_name(host, sizeof host);
    char *rtdir = strdup(rt);
    char *slash = rtdir ? strrchr(rtdir, '/') : NULL;
    if (!slash || slash == rtdir) python();
    *slash = 0;
    char planpath[PATH_MAX];
    snprintf(planpath, sizeof planpath, "%s/nsplan-%s-%s-%d", rtdir, digest, host, (int)getuid());
    int pfd = open(planpath, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat pst;
    if (pfd < 0 || fstat(pfd, &pst) < 0 || !S_ISREG(pst.st_mode) || pst.st_uid != getuid() || (pst.st_mode & 022))
        python();
    size_t plen;
    char *pbuf = read_fd(pfd, &plen, 16 << 20);
    close(pfd);
    struct plan p;
    if (!pbuf || parse_plan(pbuf, plen, &p) < 0) python();
    char num[64];
    struct utsname u;
    if (!p.key || strcmp(p.key, digest) || !p.size || !p.uid || !p.euid || !p.krel || !p.kver || !p.host ||
        !p.entry || !p.mf_off || !p.rundir_cache || !p.rundir_key || uname(&u) < 0)
        python();
    snprintf(num, sizeof num, "%lld", (long long)ast.st_size);
    /* the engine asked for chose userns when the plan was made (`auto` may not, for this image) */
    const char *eng = getenv("CARRYON_ENGINE");
    eng = eng && eng[0] ? eng : "auto";
    if (!p.engines || !strstr(p.engines, eng)) python();
    if (strcmp(p.size, num) || strcmp(p.host, host) || strcmp(p.krel, u.release) || strcmp(p.kver, u.version)) python();
    snprintf(num, sizeof num, "%d", (int)getuid());
    if (strcmp(p.uid, num)) python();
    snprintf(num, sizeof num, "%d", (int)geteuid());
    if (strcmp(p.euid, num)) python();
    /* the manifest still checks out (the Python runtime's warm start checks it too) */
    long long moff = atoll(p.mf_off), mlen = atoll(p.mf_len);
    if (moff < 0 || mlen <= 0 || mlen > (16 << 20) || moff + mlen > ast.st_size) python();
    unsigned char *mf = xmalloc((size_t)mlen);
    if (pread(afd, mf, (size_t)mlen, moff) != mlen) python();
    char msha[65];
    sha256_hex(mf, (size_t)mlen, msha);
    if (strcmp(msha, p.mf_sha)) python();
    free(mf);
    close(afd);
    /* the image's cache entry: published (marker), ours, not writable by others */
    char *marker = cat(p.entry, "/", ".complete");
    if (!file_owned(p.entry, 1) || access(marker, F_OK) < 0) python();
    struct stat mst;
    if (lstat(marker, &mst) < 0 || !S_ISREG(mst.st_mode)) python();
    /* the command: Entrypoint + (ARGS or Cmd) */
    char **gargv = xmalloc((size_t)(p.nentry + (nargs ? nargs : p.ncmd) + 1) * sizeof *gargv);
    int ng = 0;
    for (int i = 0; i < p.nentry; i++) gargv[ng++] = (char *)p.entrypoint[i];
    if (nargs) for (int i = 0; i < nargs; i++) gargv[ng++] = args[i];
    else for (int i = 0; i < p.ncmd; i++) gargv[ng++] = (char *)p.cmd[i];
    gargv[ng] = NULL;
    if (!ng || !gargv[0][0]) python();
    /* the run's directory, its /etc copies and state */
    reap_dead_runs(p.rundir_cache, p.rundir_key, host);
    char *run_dir = make_run_dir(p.rundir_cache, p.rundir_key, host);
    if (!run_dir) python();
    char *real = realpath(run_dir, NULL);
    if (!real || strpbrk(real, ",:\\")) { remove_tree(run_dir); python(); }
    char *state = cat(real, "/", "state");
    char *upper = cat(state, "/", "ns-upper"), *work = cat(state, "/", "ns-work"), *nroot = cat(state, "/", "ns-root");
    char *ident = cat(state, "/", "ns-overlay");
    char *etc = cat(run_dir, "/", "etc");
    int ok = mkdir(state, 0700) == 0;
    if (ok) {
        int fd = open(ident, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        char *text = cat("I ", p.rundir_key, "\n");
        ok = fd >= 0 && write_all(fd, text, strlen(text)) == 0;
        if (fd >= 0) close(fd);
    }
    ok = ok && mkdir(upper, 0755) == 0 && mkdir(work, 0755) == 0 && mkdir(nroot, 0755) == 0;
    char **hosts = xmalloc((size_t)(p.nbinds + 1) * sizeof *hosts);
    for (int i = 0; ok && i < p.nbinds; i++) {
        hosts[i] = (char *)p.binds[i].host;
        if (strchr(p.binds[i].flags, 'o') && access(hosts[i], F_OK) < 0) hosts[i] = NULL;
        if (!strchr(p.binds[i].flags, 'c')) continue;
        /* the run's own copy of the host's file (runspec.default_binds) */
        hosts[i] = NULL;
        int in = open(p.binds[i].host, O_RDONLY | O_CLOEXEC);
        if (in < 0) continue;
        size_t dl;
        char *data = read_fd(in, &dl, 1 << 20);
        close(in);
        if (!data) continue;
        if (dl > (1 << 20)) dl = 1 << 20;
        if (mkdir(etc, 0755) < 0 && errno != EEXIST) { ok = 0; break; }
        const char *base = strrchr(p.binds[i].host, '/');
        char *copy = cat(etc, "/", base ? base + 1 : p.binds[i].host);
        int out = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (out < 0 || write_all(out, data, dl) < 0) ok = 0;
        if (out >= 0) close(out);
        hosts[i] = copy;
        free(data);
    }
    if (!ok) { remove_tree(run_dir); python(); }
    struct run_ctx c;
    memset(&c, 0, sizeof c);
    c.p = &p;
    char **fb = xmalloc((size_t)(nl + nargs + 1) * sizeof *fb);
    memcpy(fb, launch, (size_t)(nl + nargs + 1) * sizeof *fb);
    c.fallback_exe = fb[0];
    c.fallback = fb;
    c.fallback_env = environ;
    c.argv = gargv;
    c.envp = build_env(&p);
    c.ov[0] = p.rootfs, c.ov[1] = upper, c.ov[2] = work, c.ov[3] = nroot;
    c.bind_hosts = hosts;
    c.state = state;
    const char *rm[1] = {run_dir};
    c.remove = rm;
    c.nremove = 1;
    c.detach = 1;
    return run(&c);
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "--plan")) return from_python(atoi(argv[2]));
    if (argc >= 4 && !strcmp(argv[1], "--warm")) return warm(argc, argv);
    say("usage: carryon-nsrun --plan FD | --warm N LAUNCH... [ARGS...] (started by carryon)\n");
    return 125;
}
