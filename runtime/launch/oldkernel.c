/* carryon-oldkernel: start the frozen runtime on Linux before 2.6.39.
 *
 *     carryon-oldkernel PROGRAM [ARG]...
 *
 * The runtime's bundled glibc (2.36) implements fstat() as newfstatat(fd, "", buf, AT_EMPTY_PATH),
 * and its loader stats every library it maps that way; kernels before 2.6.39 refuse that flag
 * (EINVAL), so the loader stops at "cannot stat shared object". This small static tracer runs
 * PROGRAM (and its threads, not its children: the runtime must be able to trace those itself) and
 * rewrites each such call at its entry: newfstatat(fd >= 0, "", buf, AT_EMPTY_PATH) becomes
 * fstat(fd, buf), the same answer; AT_EMPTY_PATH with a non-empty path and AT_NO_AUTOMOUNT (2.6.38)
 * are dropped, as they change nothing there. Everything else runs as is. Every system call of
 * PROGRAM then stops here twice (2.6.32 has no seccomp filter to narrow that down): only the
 * launcher's choice on such kernels. Signals are passed on; SIGTERM and SIGHUP sent to this process
 * are forwarded to PROGRAM (SIGINT/SIGQUIT from a terminal reach PROGRAM, in the same process
 * group, by themselves). Exit status: PROGRAM's (128+N when killed by signal N), 125 when it cannot
 * be started. No stdio (its fstat would be the call this program exists to avoid). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/reg.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#define NR_FSTAT 5
#define NR_NEWFSTATAT 262
#define AT_FDCWD_ (-100)
#define AT_NO_AUTOMOUNT_ 0x800
#define AT_EMPTY_PATH_ 0x1000
#define EVENT_CLONE 3

static pid_t child;

static void say(const char *a, const char *b)
{
    const char *parts[] = {"carryon: ", a, b, "\n"};
    for (unsigned i = 0; i < 4; i++)
        if (write(2, parts[i], strlen(parts[i])) < 0)
            return;
}

static void forward(int sig)
{
    if (child > 0)
        kill(child, sig);
}

/* At a system-call entry stop of `pid`: rewrite newfstatat's flags the kernel does not know. */
static void entry(pid_t pid)
{
    struct user_regs_struct r;
    if (ptrace(PTRACE_GETREGS, pid, 0, &r) == -1 || r.orig_rax != NR_NEWFSTATAT)
        return;
    if (!(r.r10 & (AT_EMPTY_PATH_ | AT_NO_AUTOMOUNT_)))
        return;
    if (r.r10 & AT_EMPTY_PATH_) {
        errno = 0;
        long word = r.rsi ? ptrace(PTRACE_PEEKDATA, pid, (void *)r.rsi, 0) : 0;
        int empty = r.rsi == 0 || (errno == 0 && (word & 0xff) == 0);
        if (empty && (int)r.rdi != AT_FDCWD_) {
            r.orig_rax = NR_FSTAT;
            r.rsi = r.rdx;
            ptrace(PTRACE_SETREGS, pid, 0, &r);
            return;
        }
    }
    r.r10 &= ~(unsigned long)(AT_EMPTY_PATH_ | AT_NO_AUTOMOUNT_);
    ptrace(PTRACE_SETREGS, pid, 0, &r);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        say("usage: carryon-oldkernel PROGRAM [ARG]...", "");
        return 125;
    }
    child = fork();
    if (child < 0) {
        say("cannot fork: ", strerror(errno));
        return 125;
    }
    if (child == 0) {
        if (ptrace(PTRACE_TRACEME, 0, 0, 0) == -1)
            _exit(125);
        raise(SIGSTOP);
        execv(argv[1], argv + 1);
        say(argv[1], ": cannot run it");
        _exit(125);
    }
    signal(SIGTERM, forward);
    signal(SIGHUP, forward);
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    int status;
    if (waitpid(child, &status, __WALL) != child || !WIFSTOPPED(status)) {
        say("the runtime did not start under the old-kernel helper", "");
        return 125;
    }
    ptrace(PTRACE_SETOPTIONS, child, 0, PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC);
    ptrace(PTRACE_SYSCALL, child, 0, 0);
    for (;;) {
        pid_t pid = waitpid(-1, &status, __WALL);
        if (pid == -1) {
            if (errno == EINTR)
                continue;
            return 125;
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            if (pid != child)
                continue;                       /* a thread of it ended */
            if (WIFEXITED(status))
                return WEXITSTATUS(status);
            signal(WTERMSIG(status), SIG_DFL);
            kill(getpid(), WTERMSIG(status));
            return 128 + WTERMSIG(status);
        }
        if (!WIFSTOPPED(status))
            continue;
        int sig = WSTOPSIG(status);
        int deliver = 0;
        if (sig == (SIGTRAP | 0x80)) {
            /* entry or exit? rax is -ENOSYS at an entry (newfstatat never returns that) */
            struct user_regs_struct r;
            if (ptrace(PTRACE_GETREGS, pid, 0, &r) == 0 && (long)r.rax == -ENOSYS)
                entry(pid);
        } else if (sig == SIGTRAP && (status >> 16) != 0) {
            /* a clone or exec event: the new thread is traced already */
        } else if (sig == SIGSTOP && (status >> 16) == 0) {
            /* a new thread's first stop, or a SIGSTOP: let it run (job control is not kept) */
        } else {
            deliver = sig;
        }
        ptrace(PTRACE_SYSCALL, pid, 0, deliver);
    }
}
