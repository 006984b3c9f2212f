#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
static char path[] = "/etc/os-release";
static char buf[256];
int main(void) {
    char *m = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 2;
    munmap(m, 4096);                       /* nothing mapped right below the new stack */
    char *sp = m + 4096 + 64;              /* 64 bytes above the hole: no room for a path */
    long ret;
    for (int i = 0; i < 3; i++) {
        __asm__ volatile(
            "mov %%rsp, %%r12\n\t"
            "mov %[sp], %%rsp\n\t"
            "mov $4, %%eax\n\t"            /* stat */
            "syscall\n\t"
            "mov %%r12, %%rsp\n\t"
            : "=a"(ret)
            : [sp] "r"(sp), "D"(path), "S"(buf)
            : "rcx", "r11", "r12", "memory");
        printf("stat=%ld\n", ret);
    }
    return 0;
}
