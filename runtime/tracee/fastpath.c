/* Path stops of the native stop loop (see fastloop.c): the one-path calls Python gave a spec for
 * (cf_spec), answered from the path cache Python fills (cf_put, cf_clear) when the path is
 * absolute, left as they are when the path is one plain name that is not a symlink to follow (and
 * not one of the names Python must see, cf_names), or NULL, or empty. The rules are Python's fast
 * paths in runtime/syscall/enter.py; see runtime/tracee/native.py for what the cache may hold.
 * A cache key is the guest path, a NUL, and 1 or 2: the last component followed or not; or 3 for
 * a directory (cf_put by Python as it learns them): a path missing from the cache whose parent is
 * such a directory is answered as Python's fast path in runtime/path/canon.py does (the last
 * component looked at with lstat when it is followed) and kept in the cache. */
#include "fastloop.h"

#define FIRST_CHUNK 256
#define AT_FDCWD_ (-100)

/* follow rules and the flag bits they read (runtime/syscall/table.py) */
enum { FOLLOW = 0, NOFOLLOW = 1, OPEN_FLAGS = 2, AT_NOFOLLOW = 3, AT_FOLLOW = 4, INOTIFY = 5,
       FANOTIFY = 6 };
#define O_WRONLY_ 01
#define O_CREAT_ 0100
#define O_EXCL_ 0200
#define O_NOFOLLOW_ 0400000
#define AT_SYMLINK_NOFOLLOW_ 0x100
#define AT_SYMLINK_FOLLOW_ 0x400
#define IN_DONT_FOLLOW_ 0x02000000
#define FAN_MARK_DONT_FOLLOW_ 0x4

/* the byte after a cache key's NUL (runtime/tracee/native.py KEY_*) */
#define KEY_FOLLOWED 1          /* the last component followed */
#define KEY_NOT_FOLLOWED 2      /* not followed */
#define KEY_DIR 3               /* a directory of the image's tree (cf_put by Native.put_dir) */

struct spec {
    int8_t path_reg;        /* register index of the path; -1: not handled here */
    int8_t dirfd_reg;       /* register index of the dirfd; -1: the cwd */
    int8_t rule;
    int8_t flag_reg;        /* register the rule reads; -1: none */
    int8_t cached;          /* absolute paths may be answered from the cache */
    uint16_t wmask;         /* open flags that make the call Python's (copy-on-write); 0: none */
};

struct entry {
    uint64_t hash;          /* 0: free slot */
    char *key;              /* key, NUL, value, NUL */
    uint32_t klen, vlen;
};

#define CACHE_SLOTS (1u << 17)
#define CACHE_MAX (CACHE_SLOTS / 2)

static struct spec specs[MAXNR];
static struct entry *cache;
static uint32_t *used;                  /* slots in use, to empty the cache in O(entries) */
static unsigned cache_count;
static char names[2048];                /* NUL-separated plain names Python must see */
static unsigned names_len;
static int names_all;                   /* too many of them: every plain name is Python's */
static int relative_python;             /* every relative path is Python's (cf_relative) */

HIDDEN int path_init(void)
{
    for (int i = 0; i < MAXNR; i++)
        specs[i].path_reg = -1;
    if (!cache)
        cache = calloc(CACHE_SLOTS, sizeof *cache);
    if (!used)
        used = malloc(CACHE_MAX * sizeof *used);
    return cache && used ? 0 : -ENOMEM;
}

void cf_spec(int nr, int path_reg, int dirfd_reg, int rule, int flag_reg, int cached, int wmask)
{
    if (nr < 0 || nr >= MAXNR)
        return;
    specs[nr].wmask = (uint16_t)wmask;
    specs[nr].path_reg = (int8_t)path_reg;
    specs[nr].dirfd_reg = (int8_t)dirfd_reg;
    specs[nr].rule = (int8_t)rule;
    specs[nr].flag_reg = (int8_t)flag_reg;
    specs[nr].cached = (int8_t)cached;
}

int cf_names(const char *buf, unsigned len)
{
    if (len > sizeof names) {
        names_len = 0;
        names_all = 1;
        return -E2BIG;
    }
    memcpy(names, buf, len);
    names_len = len;
    names_all = 0;
    return 0;
}

/* Relative paths all go to Python from now on (1): a process's working directory may be a
 * directory copy-on-write has since replaced (runtime/path/overlay.py). */
void cf_relative(int python)
{
    relative_python = python;
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
            f = O_CREAT_ | O_WRONLY_;           /* creat() */
        return !((f & O_NOFOLLOW_) || (f & (O_CREAT_ | O_EXCL_)) == (O_CREAT_ | O_EXCL_));
    case AT_NOFOLLOW: return !(f & AT_SYMLINK_NOFOLLOW_);
    case AT_FOLLOW: return (f & AT_SYMLINK_FOLLOW_) != 0;
    case INOTIFY: return !(f & IN_DONT_FOLLOW_);
    case FANOTIFY: return !(f & FAN_MARK_DONT_FOLLOW_);
    default: return 0;
    }
}

static int is_special_name(const char *name, size_t n)
{
    if (names_all)
        return 1;
    for (unsigned i = 0; i < names_len;) {
        size_t m = strlen(names + i);
        if (m == n && !memcmp(names + i, name, n))
            return 1;
        i += (unsigned)m + 1;
    }
    return 0;
}

/* The host path of clean absolute guest `path` (len bytes, NUL at path[len]) whose parent is a
 * directory of the cache and whose last component is no name Python must see: the parent's host
 * path + the name, when the name is not followed, or lstat says it is no symlink or is missing.
 * NULL otherwise (Python answers). The result lives in a static buffer. */
static const char *in_known_dir(char *path, size_t len, int follow)
{
    static char host[2 * PATH_LIMIT + 2];
    char *slash = memrchr(path, '/', len);
    size_t plen = (size_t)(slash - path), nlen = len - plen - 1;
    if (!nlen || memmem(path, len, "//", 2) || memmem(path, len, "/.", 2))
        return NULL;                            /* not clean: `..`, `.`, empty components */
    if (is_special_name(slash + 1, nlen))
        return NULL;                            /* a bind point's name, or an ancestor's */
    char save[2] = { path[plen], path[plen + 1] };
    path[plen] = 0;
    path[plen + 1] = KEY_DIR;
    struct entry *d = find(path, plen + 2, hash_of(path, plen + 2));
    path[plen] = save[0];
    path[plen + 1] = save[1];
    if (!d->hash || d->vlen + 1 + nlen >= sizeof host)
        return NULL;
    memcpy(host, d->key + d->klen + 1, d->vlen);
    host[d->vlen] = '/';
    memcpy(host + d->vlen + 1, slash + 1, nlen);
    host[d->vlen + 1 + nlen] = 0;
    if (follow) {
        struct stat st;
        if (lstat(host, &st) == 0 ? S_ISLNK(st.st_mode) : errno != ENOENT)
            return NULL;                        /* a symlink to follow, or refused: Python */
    }
    return host;
}

/* See fastloop.h. */
HIDDEN int path_stop(int pid, unsigned long nr)
{
    static char path[PATH_LIMIT + 64];
    if (nr >= MAXNR || specs[nr].path_reg < 0)
        return -1;
    const struct spec *s = &specs[nr];
    if (s->wmask && s->flag_reg >= 0 && (regs[s->flag_reg] & s->wmask))
        return 0;                               /* a write to copy on: Python's */
    unsigned long addr = regs[s->path_reg];
    if (!addr)
        return resume(pid, C_NAMES);
    long len = read_string(pid, addr, path);
    if (len < 0)
        return 0;
    if (len == 0)
        return resume(pid, C_NAMES);
    if (path[0] == '/') {
        if (!s->cached || !cache_count)
            return 0;
        /* the key: the path, NUL, KEY_FOLLOWED or KEY_NOT_FOLLOWED */
        int follow = wants_follow(s);
        path[len + 1] = follow ? KEY_FOLLOWED : KEY_NOT_FOLLOWED;
        size_t klen = (size_t)len + 2;
        uint64_t h = hash_of(path, klen);
        struct entry *e = find(path, klen, h);
        const char *host;
        size_t size;
        if (e->hash) {
            host = e->key + e->klen + 1;
            size = (size_t)e->vlen + 1;
        } else {
            host = in_known_dir(path, (size_t)len, follow);
            if (!host)
                return 0;
            size = strlen(host) + 1;
            path[len + 1] = follow ? KEY_FOLLOWED : KEY_NOT_FOLLOWED;     /* (in_known_dir used the buffer's tail) */
            cf_put(path, (unsigned)klen, host, (unsigned)size - 1);
        }
        unsigned long at = push(pid, host, size);
        if (!at)
            return 0;                           /* Python finds another place */
        if (set_reg(pid, s->path_reg, at))
            return 0;
        return resume(pid, C_CACHED);
    }
    if (relative_python || memchr(path, '/', (size_t)len) || is_special_name(path, (size_t)len))
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
    return resume(pid, C_NAMES);
}

HIDDEN void path_reset(void)
{
    cf_clear();
    for (int i = 0; i < MAXNR; i++)
        specs[i].path_reg = -1;
    names_len = 0;
    names_all = 0;
    relative_python = 0;
}
