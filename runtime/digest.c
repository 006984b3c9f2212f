/* carryon's SHA-256 of a file range (FIPS 180-4), for the frozen runtime's cold-start check.
 *
 *     int cd_sha256_fd(int fd, unsigned long long offset, unsigned long long length,
 *                      unsigned char out[32], int allow_ni);
 *
 * hashes `length` bytes of `fd` from `offset` (pread: the descriptor's offset is left alone) into
 * `out`; 0, 1 when the file ends early, or -errno. With `allow_ni` and a CPU with the SHA
 * extensions (Intel since Goldmont/Ice Lake, AMD since Zen), the compression runs on them; else in
 * portable C. Python's builtin _sha256 holds the GIL and runs at a quarter of OpenSSL's speed; this
 * lets the runtime leave OpenSSL (libcrypto, 4.7 MB) out and still hash as fast (ctypes releases
 * the GIL for the call). `cd_sha256_ni()` says whether the SHA extensions are usable here.
 * Built by runtime/digest.py `build` (-Wall -Werror). */
#include <cpuid.h>
#include <errno.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CD_ABI 1
#define BUF (1u << 20)

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

typedef void (*blocks_fn)(uint32_t st[8], const unsigned char *p, size_t n);

static inline uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

/* portable: n 64-byte blocks */
static void blocks_c(uint32_t st[8], const unsigned char *p, size_t n)
{
    uint32_t w[64];
    for (; n; n--, p += 64) {
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6], h = st[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
            uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        st[0] += a; st[1] += b; st[2] += c; st[3] += d; st[4] += e; st[5] += f; st[6] += g; st[7] += h;
    }
}

/* SHA extensions: the state as ABEF/CDGH, two rounds per sha256rnds2, the schedule by msg1/msg2 */
__attribute__((target("sha,sse4.1,ssse3")))
static void blocks_ni(uint32_t st[8], const unsigned char *p, size_t n)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[0]), 0xB1);    /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[4]), 0x1B);     /* EFGH */
    __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);                                            /* ABEF */
    s1 = _mm_blend_epi16(s1, tmp, 0xF0);                                                 /* CDGH */
    for (; n; n--, p += 64) {
        __m128i save0 = s0, save1 = s1, w[16];
        for (int g = 0; g < 16; g++) {
            if (g < 4) {
                w[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)), bswap);
            } else {
                __m128i t = _mm_sha256msg1_epu32(w[g - 4], w[g - 3]);
                t = _mm_add_epi32(t, _mm_alignr_epi8(w[g - 1], w[g - 2], 4));
                w[g] = _mm_sha256msg2_epu32(t, w[g - 1]);
            }
            __m128i m = _mm_add_epi32(w[g], _mm_loadu_si128((const __m128i *)&K[4 * g]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, m);
            s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(m, 0x0E));
        }
        s0 = _mm_add_epi32(s0, save0);
        s1 = _mm_add_epi32(s1, save1);
    }
    tmp = _mm_shuffle_epi32(s0, 0x1B);                                                   /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);                                                    /* DCHG */
    _mm_storeu_si128((__m128i *)&st[0], _mm_blend_epi16(tmp, s1, 0xF0));                 /* DCBA */
    _mm_storeu_si128((__m128i *)&st[4], _mm_alignr_epi8(s1, tmp, 8));                    /* HGFE */
}

int cd_abi(void) { return CD_ABI; }

int cd_sha256_ni(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1))
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b & bit_SHA) != 0;
}

int cd_sha256_fd(int fd, unsigned long long offset, unsigned long long length, unsigned char out[32],
                 int allow_ni)
{
    uint32_t st[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    blocks_fn blocks = allow_ni && cd_sha256_ni() ? blocks_ni : blocks_c;
    unsigned char *buf = malloc(BUF + 128);
    if (!buf)
        return -ENOMEM;
    unsigned long long total = length;
    size_t have = 0;                       /* bytes waiting in buf (always < 64 between reads) */
    while (length) {
        size_t want = length < BUF - have ? (size_t)length : BUF - have;
        ssize_t r = pread(fd, buf + have, want, (off_t)offset);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? -errno : 1;
            free(buf);
            return e;
        }
        offset += (unsigned long long)r;
        length -= (unsigned long long)r;
        have += (size_t)r;
        size_t full = have / 64;
        blocks(st, buf, full);
        memmove(buf, buf + full * 64, have - full * 64);
        have -= full * 64;
    }
    /* padding: 0x80, zeros, the length in bits (big-endian) */
    buf[have++] = 0x80;
    size_t end = have <= 56 ? 64 : 128;
    memset(buf + have, 0, end - have);
    unsigned long long bits = total * 8;
    for (int i = 0; i < 8; i++)
        buf[end - 1 - i] = (unsigned char)(bits >> (8 * i));
    blocks(st, buf, end / 64);
    free(buf);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(st[i] >> 24);
        out[4 * i + 1] = (unsigned char)(st[i] >> 16);
        out[4 * i + 2] = (unsigned char)(st[i] >> 8);
        out[4 * i + 3] = (unsigned char)st[i];
    }
    return 0;
}
