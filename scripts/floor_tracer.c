/* floor_tracer: the cost of the ptrace stops alone, for the benchmarks (scripts/bench_engine.py,
 * scripts/bench_ports.py).
 *
 *     floor_tracer FILTER_FILE COMMAND [ARG]...
 *
 * Runs COMMAND under the classic BPF program in FILTER_FILE (struct sock_filter records, as
 * carryon's seccomp engine builds them), follows forks, vforks and threads like carryon, and at
 * every stop does the least a tracer must: PTRACE_GETREGS at a seccomp stop, then PTRACE_CONT
 * (passing signals on). No path or port translation: run COMMAND in a chroot. The tracer and the
 * guest are pinned to the CPU the tracer starts on (carryon's automatic placement does the same
 * for such guests), unless FLOOR_PIN=0. Exit status: the command's (128+N for signal N).
 *
 * Built by the benchmarks with the system C compiler when one is there; not part of carryon. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SECCOMP_FILTER_FLAG_SPEC_ALLOW
#define SECCOMP_FILTER_FLAG_SPEC_ALLOW (1UL << 2)
#endif

static struct sock_filter program[4096];

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: floor_tracer FILTER_FILE COMMAND [ARG]...\n");
        return 125;
    }
    int fd = open(argv[1], O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, program, sizeof program);
    if (n <= 0 || n % sizeof program[0]) {
        fprintf(stderr, "floor_tracer: cannot read a filter from %s\n", argv[1]);
        return 125;
    }
    close(fd);
    struct sock_fprog prog = { (unsigned short)(n / sizeof program[0]), program };

    const char *pin = getenv("FLOOR_PIN");
    if (!pin || strcmp(pin, "0")) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(sched_getcpu(), &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    pid_t child = fork();
    if (child < 0) {
        perror("floor_tracer: fork");
        return 125;
    }
    if (child == 0) {
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        raise(SIGSTOP);                             /* the tracer seizes us meanwhile */
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog)
            && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
            perror("floor_tracer: seccomp");
            _exit(125);
        }
        execvp(argv[2], argv + 2);
        perror("floor_tracer: exec");
        _exit(errno == ENOENT ? 127 : 126);
    }
    int status;
    if (waitpid(child, &status, WSTOPPED) != child
        || ptrace(PTRACE_SEIZE, child, 0, PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL
                  | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE)) {
        perror("floor_tracer: attach");
        kill(child, SIGKILL);
        return 125;
    }
    kill(child, SIGCONT);
    int rc = 125;
    struct user_regs_struct regs;
    for (;;) {
        pid_t pid = waitpid(-1, &status, __WALL);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break;                                  /* ECHILD: every guest process is gone */
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            if (pid == child)
                rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            continue;
        }
        int event = status >> 16, sig = 0;
        if (event == PTRACE_EVENT_SECCOMP)
            ptrace(PTRACE_GETREGS, pid, 0, &regs);
        else if (event == 0 && WSTOPSIG(status) != SIGSTOP)
            sig = WSTOPSIG(status);                 /* a signal for the guest: pass it on */
        ptrace(PTRACE_CONT, pid, 0, sig);
    }
    return rc;
}
