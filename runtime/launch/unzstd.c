/* carryon-unzstd: the sh launcher's decompressor for the frozen runtime's second stage.
 *
 *     carryon-unzstd <FRAME >TAR
 *
 * The runtime section is a small gzip'd tar holding this program, then one zstd frame (with its
 * content checksum) of the tar of the runtime itself: zstd -19 makes the runtime ~18 % smaller than
 * gzip -9 and unpacks ~2x faster, and the node needs no zstd tool (packer/embed.py, the launcher's
 * `unpack`). Decompresses ONE frame from stdin to stdout and stops at its end: what follows (the
 * archive's other sections, when the node has no `head` to cut the section) is not read. Exit status:
 * 0 when the frame is complete and its checksum matches, 1 otherwise (one line on stderr).
 *
 * Freestanding, like carryon-oldkernel: no libc (glibc's static start-up refuses kernels before
 * 3.2), raw system calls; libzstd's decoder from libzstd.a is linked in, with the few functions it
 * wants from a libc written here (memory: mmap per block) and a stack-protector canary in a TLS block
 * of our own. Built by packer/embed.py `build_unzstd`. */
#include <stddef.h>
#include <zstd.h>

#define SYS_read 0
#define SYS_write 1
#define SYS_mmap 9
#define SYS_munmap 11
#define SYS_exit 60
#define SYS_arch_prctl 158
#define ARCH_SET_FS 0x1002
#define EINTR_ 4

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

#define sys(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

/* ---- what libzstd.a wants from a libc */

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *dp = d;
    const unsigned char *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    unsigned char *dp = d;
    const unsigned char *sp = s;
    if (dp < sp) {
        while (n--)
            *dp++ = *sp++;
    } else {
        while (n--)
            dp[n] = sp[n];
    }
    return d;
}

void *memset(void *d, int c, size_t n)
{
    unsigned char *dp = d;
    while (n--)
        *dp++ = (unsigned char)c;
    return d;
}

/* each block its own mapping (zstd allocates a handful of large ones), its size in front */
void *malloc(size_t n)
{
    size_t total = (n + 16 + 4095) & ~(size_t)4095;
    long p = sys6(SYS_mmap, 0, (long)total, 3 /* RW */, 0x22 /* PRIVATE|ANON */, -1, 0);
    if (p < 0 && p > -4096)
        return NULL;
    *(size_t *)p = total;
    return (char *)p + 16;
}

void *calloc(size_t a, size_t b)
{
    if (b && a > (size_t)-1 / b)
        return NULL;
    return malloc(a * b);                     /* fresh anonymous pages are zero */
}

void free(void *p)
{
    if (p) {
        char *base = (char *)p - 16;
        sys(SYS_munmap, base, *(size_t *)base, 0);
    }
}

static __attribute__((noreturn)) void quit(int code)
{
    for (;;)
        sys(SYS_exit, code, 0, 0);
}

void __stack_chk_fail(void)
{
    quit(1);
}

static unsigned long len(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

static void fail(const char *why)
{
    const char *parts[] = {"carryon-unzstd: ", why, "\n"};
    for (unsigned i = 0; i < 3; i++)
        sys(SYS_write, 2, parts[i], len(parts[i]));
    quit(1);
}

static int put(const char *p, size_t n)
{
    while (n) {
        long w = sys(SYS_write, 1, p, n);
        if (w == -EINTR_)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int run(void)
{
    ZSTD_DCtx *d = ZSTD_createDCtx();
    size_t in_size = ZSTD_DStreamInSize(), out_size = ZSTD_DStreamOutSize();
    char *in = malloc(in_size), *out = malloc(out_size);
    if (!d || !in || !out)
        fail("out of memory");
    size_t ret = 1;
    for (;;) {
        long r = sys(SYS_read, 0, in, in_size);
        if (r == -EINTR_)
            continue;
        if (r < 0)
            fail("read error");
        if (r == 0)
            fail("truncated input");
        ZSTD_inBuffer ib = {in, (size_t)r, 0};
        while (ib.pos < ib.size) {
            ZSTD_outBuffer ob = {out, out_size, 0};
            ret = ZSTD_decompressStream(d, &ob, &ib);
            if (ZSTD_isError(ret))
                fail(ZSTD_getErrorName(ret));
            if (put(out, ob.pos) < 0)
                fail("write error");
            if (ret == 0) {
                /* the frame is complete (checksum verified): flush what the decoder still holds */
                for (;;) {
                    ZSTD_inBuffer none = {in, 0, 0};
                    ZSTD_outBuffer ob2 = {out, out_size, 0};
                    size_t more = ZSTD_decompressStream(d, &ob2, &none);
                    if (ZSTD_isError(more))
                        fail(ZSTD_getErrorName(more));
                    if (put(out, ob2.pos) < 0)
                        fail("write error");
                    if (ob2.pos == 0)
                        return 0;
                }
            }
        }
    }
}

static unsigned long tls[32];               /* %fs:0 points to itself; %fs:0x28 is the canary */

__attribute__((used)) static void start_c(long *sp)
{
    tls[0] = (unsigned long)tls;
    tls[5] = ((unsigned long)sp * 0x9e3779b97f4a7c15ul) & ~0xfful;
    if (sys(SYS_arch_prctl, ARCH_SET_FS, tls, 0) != 0)
        quit(1);
    quit(run());
}

__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "    xor %ebp, %ebp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call start_c\n"
        "    hlt\n");
