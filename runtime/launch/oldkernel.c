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
 * be started. No stdio (its fstat would be the call this program exists to avoid), and no libc at
 * all: freestanding, raw system calls, built -nostdlib -static -Os by packer/embed.py
 * `build_oldkernel` (a static glibc made it 690 KB of the runtime; this is a few KB). */
#include <stddef.h>

/* x86_64 system calls and the few constants used (the kernel's values) */
#define SYS_write 1
#define SYS_rt_sigaction 13
#define SYS_rt_sigreturn 15
#define SYS_getpid 39
#define SYS_fork 57
#define SYS_execve 59
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_kill 62
#define SYS_ptrace 101

#define PTRACE_TRACEME 0
#define PTRACE_PEEKDATA 2
#define PTRACE_SYSCALL 24
#define PTRACE_GETREGS 12
#define PTRACE_SETREGS 13
#define PTRACE_SETOPTIONS 0x4200
#define PTRACE_O_TRACESYSGOOD 1
#define PTRACE_O_TRACECLONE 8
#define PTRACE_O_TRACEEXEC 0x10
#define WALL_ 0x40000000
#define EINTR_ 4
#define ENOSYS_ 38
#define SIGHUP_ 1
#define SIGINT_ 2
#define SIGQUIT_ 3
#define SIGTRAP_ 5
#define SIGTERM_ 15
#define SIGSTOP_ 19
#define SIG_DFL_ 0
#define SIG_IGN_ 1
#define SA_RESTORER_ 0x04000000

#define NR_FSTAT 5
#define NR_NEWFSTATAT 262
#define AT_FDCWD_ (-100)
#define AT_NO_AUTOMOUNT_ 0x800
#define AT_EMPTY_PATH_ 0x1000

/* the kernel's struct user_regs_struct (x86_64), as PTRACE_GETREGS fills it */
struct regs {
    unsigned long r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax,
        rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs;
};

struct ksigaction {
    unsigned long handler, flags, restorer, mask;
};

static long sys6(long n, long a, long b, long c, long d)
{
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

#define sys(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0)

void oldkernel_restorer(void);
__asm__(".text\n"
        "oldkernel_restorer:\n"
        "    mov $15, %eax\n"            /* SYS_rt_sigreturn */
        "    syscall\n");

static int child;

static unsigned long len(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

static void say(const char *a, const char *b)
{
    const char *parts[] = {"carryon: ", a, b, "\n"};
    for (unsigned i = 0; i < 4; i++)
        if (sys(SYS_write, 2, parts[i], len(parts[i])) < 0)
            return;
}

static __attribute__((noreturn)) void quit(int code)
{
    for (;;)
        sys(SYS_exit, code, 0, 0);      /* exit, not exit_group: we have one thread; 2.6.32 has both */
}

static void forward(int sig)
{
    if (child > 0)
        sys(SYS_kill, child, sig, 0);
}

static void set_signal(int sig, unsigned long handler)
{
    struct ksigaction sa = {handler, SA_RESTORER_, (unsigned long)oldkernel_restorer, 0};
    sys6(SYS_rt_sigaction, sig, (long)&sa, 0, 8);
}

static long ptrace4(long req, long pid, long addr, long data)
{
    return sys6(SYS_ptrace, req, pid, addr, data);
}

/* At a system-call entry stop of `pid`: rewrite newfstatat's flags the kernel does not know. */
static void entry(int pid)
{
    struct regs r;
    if (ptrace4(PTRACE_GETREGS, pid, 0, (long)&r) < 0 || r.orig_rax != NR_NEWFSTATAT)
        return;
    if (!(r.r10 & (AT_EMPTY_PATH_ | AT_NO_AUTOMOUNT_)))
        return;
    if (r.r10 & AT_EMPTY_PATH_) {
        unsigned long word = 0;         /* the raw call stores the word at `data` */
        int empty = r.rsi == 0 || (ptrace4(PTRACE_PEEKDATA, pid, (long)r.rsi, (long)&word) == 0 &&
                                   (word & 0xff) == 0);
        if (empty && (int)r.rdi != AT_FDCWD_) {
            r.orig_rax = NR_FSTAT;
            r.rsi = r.rdx;
            ptrace4(PTRACE_SETREGS, pid, 0, (long)&r);
            return;
        }
    }
    r.r10 &= ~(unsigned long)(AT_EMPTY_PATH_ | AT_NO_AUTOMOUNT_);
    ptrace4(PTRACE_SETREGS, pid, 0, (long)&r);
}

static int run(int argc, char **argv, char **envp)
{
    if (argc < 2) {
        say("usage: carryon-oldkernel PROGRAM [ARG]...", "");
        return 125;
    }
    child = (int)sys(SYS_fork, 0, 0, 0);
    if (child < 0) {
        say("cannot fork", "");
        return 125;
    }
    if (child == 0) {
        if (ptrace4(PTRACE_TRACEME, 0, 0, 0) < 0)
            quit(125);
        sys(SYS_kill, sys(SYS_getpid, 0, 0, 0), SIGSTOP_, 0);
        sys(SYS_execve, argv[1], argv + 1, envp);
        say(argv[1], ": cannot run it");
        quit(125);
    }
    set_signal(SIGTERM_, (unsigned long)forward);
    set_signal(SIGHUP_, (unsigned long)forward);
    set_signal(SIGINT_, SIG_IGN_);
    set_signal(SIGQUIT_, SIG_IGN_);
    int status = 0;
    if (sys6(SYS_wait4, child, (long)&status, WALL_, 0) != child || (status & 0xff) != 0x7f) {
        say("the runtime did not start under the old-kernel helper", "");
        return 125;
    }
    ptrace4(PTRACE_SETOPTIONS, child, 0, PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC);
    ptrace4(PTRACE_SYSCALL, child, 0, 0);
    for (;;) {
        long pid = sys6(SYS_wait4, -1, (long)&status, WALL_, 0);
        if (pid < 0) {
            if (pid == -EINTR_)
                continue;
            return 125;
        }
        int low = status & 0x7f;
        if (low == 0 || (low != 0x7f)) {        /* exited (low 0) or killed (low = signal) */
            if (pid != child)
                continue;                       /* a thread of it ended */
            if (low == 0)
                return (status >> 8) & 0xff;
            set_signal(low, SIG_DFL_);
            sys(SYS_kill, sys(SYS_getpid, 0, 0, 0), low, 0);
            return 128 + low;
        }
        int sig = (status >> 8) & 0xff;
        int deliver = 0;
        if (sig == (SIGTRAP_ | 0x80)) {
            /* entry or exit? rax is -ENOSYS at an entry (newfstatat never returns that) */
            struct regs r;
            if (ptrace4(PTRACE_GETREGS, pid, 0, (long)&r) == 0 && (long)r.rax == -ENOSYS_)
                entry((int)pid);
        } else if (sig == SIGTRAP_ && (status >> 16) != 0) {
            /* a clone or exec event: the new thread is traced already */
        } else if (sig == SIGSTOP_ && (status >> 16) == 0) {
            /* a new thread's first stop, or a SIGSTOP: let it run (job control is not kept) */
        } else {
            deliver = sig;
        }
        ptrace4(PTRACE_SYSCALL, pid, 0, deliver);
    }
}

/* the kernel's initial stack: argc, argv[], NULL, envp[], NULL */
__attribute__((used)) static void start_c(long *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    quit(run(argc, argv, argv + argc + 1));
}

__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "    xor %ebp, %ebp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call start_c\n"
        "    hlt\n");
