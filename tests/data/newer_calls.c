/* Calls newer than Linux 2.6.32, made directly with syscall(2), and what they answer (one line
 * per case: "label result errno [fields]"). tests/test_newer_calls.py compares the lines without
 * the "X " prefix between a node that has the calls and one that lacks them (the tracer emulates
 * statx, faccessat2, getrandom, prlimit64); the "X " lines are calls that differ by design (another
 * process's limits, calls with no emulation: ENOSYS where the kernel lacks them).
 * argv[1]: a directory with a dangling symlink `dangling` (a bind of the test's). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NR_STATX 332
#define NR_FACCESSAT2 439
#define NR_GETRANDOM 318
#define NR_PRLIMIT64 302
#define NR_RENAMEAT2 316

struct ts { int64_t sec; uint32_t nsec; int32_t pad; };
struct sx {
    uint32_t mask, blksize; uint64_t attributes; uint32_t nlink, uid, gid; uint16_t mode, pad0;
    uint64_t ino, size, blocks, attributes_mask; struct ts atime, btime, ctime, mtime;
    uint32_t rdev_major, rdev_minor, dev_major, dev_minor; uint64_t spare[14];
};
struct rl { uint64_t cur, max; };

static void res(const char *label, long r)
{
    printf("%s %ld %d\n", label, r < 0 ? -1L : r, r < 0 ? errno : 0);
}

static void sx(const char *label, int dirfd, const char *path, int flags)
{
    struct sx b;
    memset(&b, 0xAA, sizeof b);
    long r = syscall(NR_STATX, dirfd, path, flags, 0xfff, &b);
    if (r != 0) {
        res(label, r);
        return;
    }
    /* the fields Linux kernels before statx know (no atime: reading may change it) */
    printf("%s 0 0 mask=%#x mode=%o nlink=%u uid=%u gid=%u ino=%llu size=%llu blocks=%llu "
           "blksize=%u mtime=%lld.%u ctime=%lld.%u rdev=%u:%u dev=%u:%u\n", label,
           b.mask & 0x7ff, b.mode, b.nlink, b.uid, b.gid, (unsigned long long)b.ino,
           (unsigned long long)b.size, (unsigned long long)b.blocks, b.blksize,
           (long long)b.mtime.sec, b.mtime.nsec, (long long)b.ctime.sec, b.ctime.nsec,
           b.rdev_major, b.rdev_minor, b.dev_major, b.dev_minor);
}

int main(int argc, char **argv)
{
    char dangling[512];
    snprintf(dangling, sizeof dangling, "%s/dangling", argc > 1 ? argv[1] : "/work");
    int fd_passwd = open("/etc/passwd", O_RDONLY);
    int fd_usr = open("/usr", O_RDONLY | O_DIRECTORY);

    sx("statx-file", AT_FDCWD, "/etc/passwd", 0);
    sx("statx-link-nofollow", AT_FDCWD, "/etc/os-release", AT_SYMLINK_NOFOLLOW);
    sx("statx-link-follow", AT_FDCWD, "/etc/os-release", 0);
    sx("statx-dir-dirfd", fd_usr, "bin", 0);
    sx("statx-dirfd-link", fd_usr, "bin/sh", AT_SYMLINK_NOFOLLOW);
    sx("statx-empty-path-fd", fd_passwd, "", AT_EMPTY_PATH);
    sx("statx-dev-null", AT_FDCWD, "/dev/null", AT_STATX_DONT_SYNC);
    sx("statx-dangling", AT_FDCWD, dangling, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT);
    sx("statx-missing", AT_FDCWD, "/nonexistent/x", 0);
    sx("statx-empty-no-flag", fd_passwd, "", 0);
    sx("statx-bad-flag", AT_FDCWD, "/etc/passwd", 0x80000);
    sx("statx-both-syncs", AT_FDCWD, "/etc/passwd", AT_STATX_FORCE_SYNC | AT_STATX_DONT_SYNC);
    res("statx-reserved-mask", syscall(NR_STATX, AT_FDCWD, "/etc/passwd", 0, 0x80000000u, (void *)0));
    res("statx-null-buf", syscall(NR_STATX, AT_FDCWD, "/etc/passwd", 0, 0xfff, (void *)0));
    if (chdir("/etc") == 0) {
        sx("statx-cwd-empty", AT_FDCWD, "", AT_EMPTY_PATH);
        sx("statx-relative", AT_FDCWD, "passwd", 0);
    }

    struct stat st;
    long k = syscall(SYS_newfstatat, fd_passwd, "", &st, AT_EMPTY_PATH);
    printf("fstatat-empty-fd %ld %d ino=%llu size=%lld\n", k, k ? errno : 0,
           (unsigned long long)st.st_ino, (long long)st.st_size);
    k = syscall(SYS_newfstatat, fd_usr, "bin", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    printf("fstatat-flag-path %ld %d ino=%llu mode=%o\n", k, k ? errno : 0,
           (unsigned long long)st.st_ino, st.st_mode);
    k = syscall(SYS_newfstatat, AT_FDCWD, "", &st, AT_EMPTY_PATH | AT_NO_AUTOMOUNT);
    printf("fstatat-empty-cwd %ld %d ino=%llu\n", k, k ? errno : 0, (unsigned long long)st.st_ino);
    res("fstatat-empty-no-flag", syscall(SYS_newfstatat, fd_passwd, "", &st, 0));

    res("faccessat2-r", syscall(NR_FACCESSAT2, AT_FDCWD, "/etc/passwd", R_OK, 0));
    res("faccessat2-w", syscall(NR_FACCESSAT2, AT_FDCWD, "/etc/passwd", W_OK, 0));
    res("faccessat2-x", syscall(NR_FACCESSAT2, AT_FDCWD, "/etc/passwd", X_OK, 0));
    res("faccessat2-eaccess", syscall(NR_FACCESSAT2, AT_FDCWD, "/etc/passwd", R_OK, AT_EACCESS));
    res("faccessat2-link-w-nofollow",
        syscall(NR_FACCESSAT2, AT_FDCWD, "/etc/os-release", W_OK, AT_SYMLINK_NOFOLLOW));
    res("faccessat2-link-w-follow", syscall(NR_FACCESSAT2, AT_FDCWD, "/etc/os-release", W_OK, 0));
    res("faccessat2-dangling-nofollow", syscall(NR_FACCESSAT2, AT_FDCWD, dangling, F_OK,
                                                AT_SYMLINK_NOFOLLOW));
    res("faccessat2-dangling-follow", syscall(NR_FACCESSAT2, AT_FDCWD, dangling, F_OK, 0));
    res("faccessat2-dirfd-rel", syscall(NR_FACCESSAT2, fd_usr, "bin/sh", X_OK, AT_SYMLINK_NOFOLLOW));
    res("faccessat2-empty-fd-r", syscall(NR_FACCESSAT2, fd_passwd, "", R_OK, AT_EMPTY_PATH));
    res("faccessat2-empty-fd-w", syscall(NR_FACCESSAT2, fd_passwd, "", W_OK, AT_EMPTY_PATH));
    res("faccessat2-empty-cwd", syscall(NR_FACCESSAT2, AT_FDCWD, "", X_OK, AT_EMPTY_PATH));
    res("faccessat2-empty-badfd", syscall(NR_FACCESSAT2, 999, "", R_OK, AT_EMPTY_PATH));
    res("faccessat2-empty-no-flag", syscall(NR_FACCESSAT2, fd_passwd, "", R_OK, 0));
    res("faccessat2-missing", syscall(NR_FACCESSAT2, AT_FDCWD, "/nonexistent", F_OK, 0));
    res("faccessat2-bad-flag", syscall(NR_FACCESSAT2, AT_FDCWD, "/etc/passwd", R_OK, 0x8000));
    res("faccessat2-bad-mode", syscall(NR_FACCESSAT2, AT_FDCWD, "/etc/passwd", 8, 0));

    unsigned char buf[64];
    memset(buf, 0, sizeof buf);
    long r = syscall(NR_GETRANDOM, buf, 32, 0);
    int nonzero = 0;
    for (int i = 0; i < 32; i++)
        nonzero |= buf[i];
    printf("getrandom-32 %ld %d filled=%d\n", r, r < 0 ? errno : 0, nonzero != 0);
    res("getrandom-nonblock", syscall(NR_GETRANDOM, buf, 16, 1));
    res("getrandom-random", syscall(NR_GETRANDOM, buf, 16, 2));
    res("getrandom-insecure", syscall(NR_GETRANDOM, buf, 16, 4));
    res("getrandom-zero", syscall(NR_GETRANDOM, buf, 0, 0));
    res("getrandom-bad-flag", syscall(NR_GETRANDOM, buf, 16, 0x40));
    res("getrandom-random-insecure", syscall(NR_GETRANDOM, buf, 16, 6));
    res("getrandom-null", syscall(NR_GETRANDOM, (void *)0, 16, 0));

    struct rl old = {0, 0}, old2 = {0, 0}, cur = {0, 0}, nw;
    r = syscall(NR_PRLIMIT64, 0, RLIMIT_NOFILE, (void *)0, &old);
    printf("prlimit64-get %ld %d %llu %llu\n", r, r < 0 ? errno : 0, (unsigned long long)old.cur,
           (unsigned long long)old.max);
    nw.cur = 64;
    nw.max = old.max;
    r = syscall(NR_PRLIMIT64, 0, RLIMIT_NOFILE, &nw, &old2);
    printf("prlimit64-set-get %ld %d %llu %llu\n", r, r < 0 ? errno : 0,
           (unsigned long long)old2.cur, (unsigned long long)old2.max);
    r = syscall(NR_PRLIMIT64, getpid(), RLIMIT_NOFILE, (void *)0, &cur);
    printf("prlimit64-self-pid %ld %d %llu %llu\n", r, r < 0 ? errno : 0,
           (unsigned long long)cur.cur, (unsigned long long)cur.max);
    nw.cur = 65;
    res("prlimit64-set-only", syscall(NR_PRLIMIT64, 0, RLIMIT_NOFILE, &nw, (void *)0));
    r = syscall(NR_PRLIMIT64, 0, RLIMIT_NOFILE, (void *)0, &cur);
    printf("prlimit64-after %ld %d %llu %llu\n", r, r < 0 ? errno : 0, (unsigned long long)cur.cur,
           (unsigned long long)cur.max);
    r = syscall(NR_PRLIMIT64, 0, RLIMIT_CORE, (void *)0, &cur);
    printf("prlimit64-core %ld %d %llu %llu\n", r, r < 0 ? errno : 0, (unsigned long long)cur.cur,
           (unsigned long long)cur.max);
    nw.cur = nw.max = old.max + 1;
    res("prlimit64-raise-hard", syscall(NR_PRLIMIT64, 0, RLIMIT_NOFILE, &nw, (void *)0));
    nw.cur = 10;
    nw.max = 5;
    res("prlimit64-cur-above-max", syscall(NR_PRLIMIT64, 0, RLIMIT_NOFILE, &nw, (void *)0));
    res("prlimit64-bad-resource", syscall(NR_PRLIMIT64, 0, 99, (void *)0, &cur));
    res("prlimit64-nothing", syscall(NR_PRLIMIT64, 0, RLIMIT_NOFILE, (void *)0, (void *)0));
    res("prlimit64-bad-old", syscall(NR_PRLIMIT64, 0, RLIMIT_NOFILE, (void *)0, (void *)8));
    res("prlimit64-no-such-pid", syscall(NR_PRLIMIT64, 0x3ffffff0, RLIMIT_NOFILE, (void *)0, &cur));

    char a[600], b[600];
    snprintf(a, sizeof a, "%s/rename-a-%d", argc > 1 ? argv[1] : "/work", (int)getpid());
    snprintf(b, sizeof b, "%s/rename-b-%d", argc > 1 ? argv[1] : "/work", (int)getpid());
    close(open(a, O_WRONLY | O_CREAT, 0644));
    res("renameat2-no-flags", syscall(NR_RENAMEAT2, AT_FDCWD, a, AT_FDCWD, b, 0));
    res("renameat2-gone", access(a, F_OK));
    res("renameat2-missing", syscall(NR_RENAMEAT2, AT_FDCWD, a, AT_FDCWD, b, 0));
    close(open(a, O_WRONLY | O_CREAT, 0644));

    /* differ by design */
    res("X renameat2-noreplace", syscall(NR_RENAMEAT2, AT_FDCWD, b, AT_FDCWD, a, 1));
    unlink(a);
    unlink(b);
    res("X prlimit64-parent", syscall(NR_PRLIMIT64, getppid(), RLIMIT_NOFILE, (void *)0, &cur));
    res("X prlimit64-init", syscall(NR_PRLIMIT64, 1, RLIMIT_NOFILE, &nw, (void *)0));
    res("X clone3", syscall(435, (void *)0, 0));
    res("X close_range", syscall(436, 100, 99, 0));
    res("X openat2", syscall(437, AT_FDCWD, "/", (void *)0, 0));
    res("X pidfd_open", syscall(434, getpid(), 0) >= 0 ? 0 : -1);
    res("X memfd_create", syscall(319, "x", 0) >= 0 ? 0 : -1);
    return 0;
}
