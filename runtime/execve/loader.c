/* carryon-loader: starts a guest's dynamic program as the kernel would have started it.
 *
 * The kernel reads PT_INTERP on the host, so the tracer cannot exec a guest's dynamic program as
 * is. It execs this static program instead (runtime/execve/plan.py), with the guest's argv and
 * envp UNCHANGED: the kernel lays out the stack, /proc/PID/cmdline and /proc/PID/environ exactly
 * as for the program. What the kernel did for this file instead of the program is redone here:
 *   1. one call to the tracer (LOADER_CALL, answered at its stop, natively or in Python: see
 *      runtime/execve/loader.py): it comes back as an open descriptor of the program (the call
 *      is turned into an openat of its host path), and the buffer holds the execve filename the
 *      guest gave, its comm name, and the guest's ids after this exec when they are faked;
 *   2. the program is mapped (at its own addresses, or a PIE at the kernel's base), then the
 *      loader its PT_INTERP names, opened by that GUEST path (the tracer translates the open;
 *      under the plain ptrace engine, which stops on nothing until our int3, by its host path);
 *      bss zeroed, holes between segments unmapped;
 *   3. the stack made executable when the program's PT_GNU_STACK asks for it;
 *   4. the auxiliary vector rewritten in place: AT_PHDR, AT_PHENT, AT_PHNUM, AT_ENTRY, AT_BASE,
 *      AT_FLAGS, AT_EXECFN (the guest's filename, written where the kernel put this program's:
 *      the tracer pads that path so the guest's fits) and, with faked ids, AT_UID, AT_EUID,
 *      AT_GID, AT_EGID and AT_SECURE;
 *   5. prctl(PR_SET_NAME) with the comm name, and PR_SET_MM_MAP where the kernel takes it
 *      (CONFIG_CHECKPOINT_RESTORE, 3.18+; no privilege needed without a new exe_fd): the program's
 *      code and data bounds, its brk right after its bss (randomized as the kernel does), and the
 *      new auxv for /proc/PID/auxv;
 *   6. this program unmaps itself from a one-page trampoline, which then jumps to the
 *      interpreter's entry with the original stack pointer and zeroed registers.
 * Freestanding (no libc: raw system calls), built -nostdlib -static, linked at a fixed address far
 * from where programs and loaders go (runtime/execve/loader.py `build`). Errors: a one-line message
 * on stderr and exit status 127.
 */
#include <elf.h>
#include <stddef.h>
#include <stdint.h>

/* system calls (x86_64) */
#define SYS_write 1
#define SYS_close 3
#define SYS_mmap 9
#define SYS_mprotect 10
#define SYS_munmap 11
#define SYS_pread64 17
#define SYS_personality 135
#define SYS_prctl 157
#define SYS_exit_group 231
#define SYS_openat 257
#define SYS_getrandom 318
#define LOADER_CALL 184         /* tuxcall: ENOSYS natively; the tracer answers it */

#define PROT_READ 1
#define PROT_WRITE 2
#define PROT_EXEC 4
#define PROT_GROWSDOWN 0x01000000
#define MAP_PRIVATE 0x02
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define MAP_FIXED_NOREPLACE 0x100000
#define O_RDONLY 0
#define O_CLOEXEC 02000000
#define AT_FDCWD (-100)
#define PR_SET_NAME 15
#define PR_SET_MM 35
#define PR_SET_MM_MAP 14
#define ADDR_NO_RANDOMIZE 0x0040000
#define GRND_NONBLOCK 1

/* what the tracer writes into the buffer (runtime/execve/loader.py `encode`) */
#define INFO_MAGIC 0x52444c43u  /* "CLDR" */
#define INFO_IDS 1              /* flags: the ids are the guest's, faked */
#define INFO_PLAIN 2            /* flags: no stops until our int3 (the plain ptrace engine) */
#define INFO_SIZE 12288
struct info {
    uint32_t magic, flags;
    uint32_t ruid, euid, rgid, egid;
    uint32_t execfn, comm, path;        /* offsets of NUL-terminated strings in the buffer */
    uint32_t size;
    uint32_t interp;                    /* offset of the interpreter's host path */
};

#define MAX_PHNUM 128
#define ELF_ET_DYN_BASE 0x555555554000ul        /* the kernel's base of PIE programs (x86_64) */
#define MMAP_RND_BITS 28
#define BRK_RND_RANGE (1ul << 30)

struct prctl_mm_map {
    uint64_t start_code, end_code, start_data, end_data, start_brk, brk, start_stack;
    uint64_t arg_start, arg_end, env_start, env_end;
    uint64_t *auxv;
    uint32_t auxv_size, exe_fd;
};

struct elf {
    union {                                     /* the file's head: headers in one read */
        struct {
            Elf64_Ehdr eh;
            Elf64_Phdr ph[MAX_PHNUM];
        };
        unsigned char raw[sizeof(Elf64_Ehdr) + MAX_PHNUM * sizeof(Elf64_Phdr)];
    };
    long got;                                   /* bytes of raw read from offset 0 */
    unsigned long bias;
};

static union { struct info h; char raw[INFO_SIZE]; } info;
static struct elf prog, interp;
static char interp_path[4096];
static unsigned long page = 4096;

extern const char __executable_start[], _end[];
extern const char tramp_start[], tramp_end[];

/* A system call. The argument registers count as changed: the tracer rewrites them (the path of
 * an open, and all of LOADER_CALL's) and leaves them so. */
static long sc(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile ("syscall" : "+a"(n), "+D"(a), "+S"(b), "+d"(c), "+r"(r10), "+r"(r8), "+r"(r9)
                      : : "rcx", "r11", "memory");
    return n;
}

/* the compiler may call these for copies and clears */
void *memset(void *d, int c, size_t n)
{
    volatile unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    volatile unsigned char *p = d;
    const volatile unsigned char *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

static size_t len(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static int failed(long r) { return (unsigned long)r > -4096ul; }

__attribute__((noreturn)) static void die(const char *what, const char *detail)
{
    sc(SYS_write, 2, (long)"carryon-loader: ", 16, 0, 0, 0);
    sc(SYS_write, 2, (long)what, (long)len(what), 0, 0, 0);
    if (detail) {
        sc(SYS_write, 2, (long)": ", 2, 0, 0, 0);
        sc(SYS_write, 2, (long)detail, (long)len(detail), 0, 0, 0);
    }
    sc(SYS_write, 2, (long)"\n", 1, 0, 0, 0);
    for (;;)
        sc(SYS_exit_group, 127, 0, 0, 0, 0, 0);
}

static unsigned long down(unsigned long a) { return a & ~(page - 1); }
static unsigned long up(unsigned long a) { return (a + page - 1) & ~(page - 1); }

static void pread_all(int fd, void *buf, size_t n, unsigned long off, const char *name)
{
    if (sc(SYS_pread64, fd, (long)buf, (long)n, (long)off, 0, 0) != (long)n)
        die("cannot read the ELF headers of", name);
}

static void read_headers(int fd, struct elf *e, const char *name)
{
    e->got = sc(SYS_pread64, fd, (long)e->raw, sizeof e->raw, 0, 0, 0);
    if (e->got < (long)sizeof e->eh)
        die("cannot read the ELF headers of", name);
    const unsigned char *id = e->eh.e_ident;
    if (id[0] != 0x7f || id[1] != 'E' || id[2] != 'L' || id[3] != 'F' || id[EI_CLASS] != ELFCLASS64
            || id[EI_DATA] != ELFDATA2LSB || e->eh.e_machine != EM_X86_64
            || (e->eh.e_type != ET_EXEC && e->eh.e_type != ET_DYN)
            || e->eh.e_phentsize != sizeof(Elf64_Phdr) || e->eh.e_phnum == 0
            || e->eh.e_phnum > MAX_PHNUM)
        die("not an x86_64 ELF program", name);
    unsigned long size = e->eh.e_phnum * sizeof(Elf64_Phdr);
    if (e->eh.e_phoff != sizeof e->eh || e->got < (long)(sizeof e->eh + size))
        pread_all(fd, e->ph, size, e->eh.e_phoff, name);
}

static int prot_of(uint32_t flags)
{
    return (flags & PF_R ? PROT_READ : 0) | (flags & PF_W ? PROT_WRITE : 0)
           | (flags & PF_X ? PROT_EXEC : 0);
}

/* Map the PT_LOAD segments of `e` (open on fd); an ET_DYN one with its lowest segment at `hint`
 * (0: where mmap likes), if free. */
static void map_elf(int fd, struct elf *e, unsigned long hint, const char *name)
{
    unsigned long lo = ~0ul, hi = 0;
    for (int i = 0; i < e->eh.e_phnum; i++) {
        Elf64_Phdr *p = &e->ph[i];
        if (p->p_type != PT_LOAD)
            continue;
        if (p->p_memsz < p->p_filesz || (p->p_vaddr & (page - 1)) != (p->p_offset & (page - 1)))
            die("bad program headers in", name);
        if (down(p->p_vaddr) < lo)
            lo = down(p->p_vaddr);
        if (up(p->p_vaddr + p->p_memsz) > hi)
            hi = up(p->p_vaddr + p->p_memsz);
    }
    if (hi <= lo)
        die("nothing to load in", name);
    e->bias = 0;
    int fixed = MAP_FIXED_NOREPLACE;
    if (e->eh.e_type == ET_DYN) {
        /* the whole span first (its room), then the segments over it */
        long base = sc(SYS_mmap, (long)hint, (long)(hi - lo), 0, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (failed(base))
            die("out of address space for", name);
        e->bias = (unsigned long)base - lo;
        fixed = MAP_FIXED;
    }
    unsigned long prev = e->bias + lo;         /* end of the previous segment: holes are unmapped */
    for (int i = 0; i < e->eh.e_phnum; i++) {
        Elf64_Phdr *p = &e->ph[i];
        if (p->p_type != PT_LOAD)
            continue;
        int prot = prot_of(p->p_flags);
        unsigned long start = e->bias + p->p_vaddr, first = down(start);
        unsigned long fend = start + p->p_filesz, mend = start + p->p_memsz;
        if (first > prev && e->eh.e_type == ET_DYN)
            sc(SYS_munmap, (long)prev, (long)(first - prev), 0, 0, 0, 0);
        unsigned long zpage = first;            /* first page not mapped from the file */
        if (p->p_filesz) {
            long r = sc(SYS_mmap, (long)first, (long)(fend - first), prot, MAP_PRIVATE | fixed, fd,
                        (long)(p->p_offset - (start - first)));
            if (failed(r) || (unsigned long)r != first)
                die("cannot map", name);
            zpage = up(fend);
            if (mend > fend && zpage > fend) {  /* bss starts in the file's last page: zero it */
                if (!(prot & PROT_WRITE))
                    sc(SYS_mprotect, (long)down(fend), (long)page, prot | PROT_WRITE, 0, 0, 0);
                memset((void *)fend, 0, zpage - fend);
                if (!(prot & PROT_WRITE))
                    sc(SYS_mprotect, (long)down(fend), (long)page, prot, 0, 0, 0);
            }
        }
        if (up(mend) > zpage) {
            long r = sc(SYS_mmap, (long)zpage, (long)(up(mend) - zpage), prot,
                        MAP_PRIVATE | MAP_ANONYMOUS | fixed, -1, 0);
            if (failed(r) || (unsigned long)r != zpage)
                die("cannot map", name);
        }
        if (up(mend) > prev)
            prev = up(mend);
    }
}

static unsigned long randoms[2];               /* the PIE base's and the brk's */

/* The trampoline, copied to a page of its own: munmap(rdi, rsi) (this program), an int3 when r14
 * is not zero (INFO_PLAIN: the tracer's cue, after our last system call), then the stack pointer
 * r12, all registers zero, and a jump to r13 (through the stack, below the new top). */
__asm__(".section .rodata\n"
        "tramp_start:\n"
        "    mov $11, %eax\n"
        "    syscall\n"
        "    test %r14, %r14\n"
        "    jz 1f\n"
        "    int3\n"
        "1:\n"
        "    mov %r12, %rsp\n"
        "    push %r13\n"
        "    xor %eax, %eax\n    xor %ebx, %ebx\n    xor %ecx, %ecx\n    xor %edx, %edx\n"
        "    xor %esi, %esi\n    xor %edi, %edi\n    xor %ebp, %ebp\n    xor %r8d, %r8d\n"
        "    xor %r9d, %r9d\n    xor %r10d, %r10d\n    xor %r11d, %r11d\n    xor %r12d, %r12d\n"
        "    xor %r13d, %r13d\n    xor %r14d, %r14d\n    xor %r15d, %r15d\n"
        "    ret\n"
        "tramp_end:\n"
        ".text\n");

__attribute__((noreturn, used)) void loader_main(unsigned long *sp)
{
    long argc = (long)sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    long envc = 0;
    while (envp[envc])
        envc++;
    unsigned long *auxv = (unsigned long *)(envp + envc + 1);
    unsigned long *a;
    char *old_execfn = 0;
    for (a = auxv; a[0] != AT_NULL; a += 2) {
        if (a[0] == AT_PAGESZ && a[1])
            page = a[1];
        else if (a[0] == AT_EXECFN)
            old_execfn = (char *)a[1];
    }
    unsigned long auxv_bytes = (unsigned long)(a + 2) - (unsigned long)auxv;

    /* 1. what to run */
    long fd = sc(LOADER_CALL, (long)&info, sizeof info, 0, 0, 0, 0);
    if (fd == -38)                              /* ENOSYS */
        die("runs only under carryon's tracer", 0);
    if (info.h.magic != INFO_MAGIC || info.h.size > sizeof info || info.h.execfn >= info.h.size
            || info.h.comm >= info.h.size || info.h.path >= info.h.size
            || info.h.interp >= info.h.size)
        die("bad answer from the tracer", 0);
    info.raw[sizeof info - 1] = 0;
    const char *execfn = info.raw + info.h.execfn;
    const char *prog_name = execfn;
    if (failed(fd))
        die("cannot open", prog_name);

    /* 2. the program, then its loader */
    read_headers((int)fd, &prog, prog_name);
    int personality = (int)sc(SYS_personality, 0xffffffff, 0, 0, 0, 0, 0);
    int randomize = !failed(personality) && !(personality & ADDR_NO_RANDOMIZE);
    unsigned long hint = ELF_ET_DYN_BASE;
    if (randomize) {
        sc(SYS_getrandom, (long)randoms, sizeof randoms, GRND_NONBLOCK, 0, 0, 0);
        hint += (randoms[0] & ((1ul << MMAP_RND_BITS) - 1)) * page;
    }
    int has_interp = 0, exec_stack = 0;
    for (int i = 0; i < prog.eh.e_phnum; i++) {
        Elf64_Phdr *p = &prog.ph[i];
        if (p->p_type == PT_INTERP) {
            if (p->p_filesz < 2 || p->p_filesz > sizeof interp_path)
                die("bad PT_INTERP in", prog_name);
            if (p->p_offset + p->p_filesz <= (unsigned long)prog.got)    /* in the head read */
                memcpy(interp_path, prog.raw + p->p_offset, p->p_filesz);
            else
                pread_all((int)fd, interp_path, p->p_filesz, p->p_offset, prog_name);
            interp_path[p->p_filesz - 1] = 0;
            has_interp = 1;
        } else if (p->p_type == PT_GNU_STACK) {
            exec_stack = (p->p_flags & PF_X) != 0;
        }
    }
    map_elf((int)fd, &prog, down(hint), prog_name);  /* a PIE's first segment at the kernel's base */
    sc(SYS_close, fd, 0, 0, 0, 0, 0);
    unsigned long entry = prog.bias + prog.eh.e_entry, base = 0;
    if (has_interp) {
        long ifd = -1;
        if (info.h.flags & INFO_PLAIN)         /* untraced now: the host path (see above) */
            ifd = sc(SYS_openat, AT_FDCWD, (long)(info.raw + info.h.interp), O_RDONLY | O_CLOEXEC,
                     0, 0, 0);
        if (failed(ifd))                        /* translated: the guest path */
            ifd = sc(SYS_openat, AT_FDCWD, (long)interp_path, O_RDONLY | O_CLOEXEC, 0, 0, 0);
        if (failed(ifd))
            die("cannot open the ELF interpreter", interp_path);
        read_headers((int)ifd, &interp, interp_path);
        map_elf((int)ifd, &interp, 0, interp_path);
        sc(SYS_close, ifd, 0, 0, 0, 0, 0);
        base = interp.bias;
        entry = interp.bias + interp.eh.e_entry;
    }

    /* the kernel's bounds of the program: code, data, brk, AT_PHDR */
    unsigned long start_code = ~0ul, end_code = 0, start_data = 0, end_data = 0, elf_brk = 0;
    unsigned long phdr = 0;
    for (int i = 0; i < prog.eh.e_phnum; i++) {
        Elf64_Phdr *p = &prog.ph[i];
        if (p->p_type != PT_LOAD)
            continue;
        unsigned long k = p->p_vaddr;
        if ((p->p_flags & PF_X) && k < start_code)
            start_code = k;
        if (start_data < k)
            start_data = k;
        k = p->p_vaddr + p->p_filesz;
        if ((p->p_flags & PF_X) && end_code < k)
            end_code = k;
        if (end_data < k)
            end_data = k;
        k = p->p_vaddr + p->p_memsz;
        if (k > elf_brk)
            elf_brk = k;
        if (p->p_offset <= prog.eh.e_phoff && prog.eh.e_phoff < p->p_offset + p->p_filesz)
            phdr = prog.eh.e_phoff - p->p_offset + p->p_vaddr;
    }
    phdr += prog.bias;

    /* 3. the stack */
    char *execfn_end = old_execfn ? old_execfn + len(old_execfn) : 0;
    unsigned long stack_top = execfn_end ? up((unsigned long)execfn_end + 1 + sizeof(long)) : 0;
    if (exec_stack && stack_top)
        sc(SYS_mprotect, (long)down((unsigned long)sp), (long)(stack_top - down((unsigned long)sp)),
           PROT_READ | PROT_WRITE | PROT_EXEC | PROT_GROWSDOWN, 0, 0, 0);

    /* the trampoline's page (also room for AT_EXECFN should it not fit in place) */
    long tramp = sc(SYS_mmap, 0, (long)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (failed(tramp))
        die("out of memory", 0);
    size_t tramp_len = (size_t)(tramp_end - tramp_start);
    memcpy((void *)tramp, tramp_start, tramp_len);

    /* 4. the auxiliary vector */
    size_t n = len(execfn);
    char *new_execfn;
    if (old_execfn && n <= (size_t)(execfn_end - old_execfn)) {
        new_execfn = execfn_end - n;            /* ends where the kernel's ended: at the top */
        memcpy(new_execfn, execfn, n);
        memset(old_execfn, 0, (size_t)(new_execfn - old_execfn));
    } else {
        if (n > page - tramp_len - 1)
            n = page - tramp_len - 1;
        new_execfn = (char *)tramp + tramp_len;
        memcpy(new_execfn, execfn, n);
        new_execfn[n] = 0;
    }
    sc(SYS_mprotect, tramp, (long)page, PROT_READ | PROT_EXEC, 0, 0, 0);
    for (a = auxv; a[0] != AT_NULL; a += 2) {
        switch (a[0]) {
        case AT_PHDR: a[1] = phdr; break;
        case AT_PHENT: a[1] = prog.eh.e_phentsize; break;
        case AT_PHNUM: a[1] = prog.eh.e_phnum; break;
        case AT_BASE: a[1] = base; break;
        case AT_FLAGS: a[1] = 0; break;
        case AT_ENTRY: a[1] = prog.bias + prog.eh.e_entry; break;
        case AT_EXECFN: a[1] = (unsigned long)new_execfn; break;
        }
        if (!(info.h.flags & INFO_IDS))
            continue;
        switch (a[0]) {
        case AT_UID: a[1] = info.h.ruid; break;
        case AT_EUID: a[1] = info.h.euid; break;
        case AT_GID: a[1] = info.h.rgid; break;
        case AT_EGID: a[1] = info.h.egid; break;
        case AT_SECURE:
            a[1] = info.h.euid != info.h.ruid || info.h.egid != info.h.rgid;
            break;
        }
    }

    /* 5. comm, and what /proc shows of the memory layout */
    sc(SYS_prctl, PR_SET_NAME, (long)(info.raw + info.h.comm), 0, 0, 0, 0);
    if (argc > 0 && start_code < end_code) {
        unsigned long brk = up(elf_brk + prog.bias);
        if (randomize)
            brk += (randoms[1] % (BRK_RND_RANGE / page)) * page;
        char *arg_end = argv[argc - 1] + len(argv[argc - 1]) + 1;
        char *env_end = envc ? envp[envc - 1] + len(envp[envc - 1]) + 1 : arg_end;
        struct prctl_mm_map map = {
            .start_code = start_code + prog.bias, .end_code = end_code + prog.bias,
            .start_data = start_data + prog.bias, .end_data = end_data + prog.bias,
            .start_brk = brk, .brk = brk, .start_stack = (unsigned long)sp,
            .arg_start = (unsigned long)argv[0], .arg_end = (unsigned long)arg_end,
            .env_start = envc ? (unsigned long)envp[0] : (unsigned long)arg_end,
            .env_end = (unsigned long)env_end,
            .auxv = auxv, .auxv_size = (uint32_t)auxv_bytes, .exe_fd = (uint32_t)-1,
        };
        sc(SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, (long)&map, sizeof map, 0, 0);
    }

    /* 6. away, and into the interpreter (INFO_PLAIN: traced again from the trampoline's int3) */
    unsigned long self = down((unsigned long)__executable_start);
    register unsigned long r12 __asm__("r12") = (unsigned long)sp;
    register unsigned long r13 __asm__("r13") = entry;
    register unsigned long r14 __asm__("r14") = info.h.flags & INFO_PLAIN;
    __asm__ volatile ("jmp *%%rax" : : "a"(tramp), "D"(self), "S"(up((unsigned long)_end) - self),
                      "r"(r12), "r"(r13), "r"(r14) : "memory");
    __builtin_unreachable();
}

__asm__(".text\n"
        ".globl _start\n"
        "_start:\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call loader_main\n"
        "    hlt\n");
