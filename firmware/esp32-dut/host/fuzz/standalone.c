/* A main() for the fuzz target without libFuzzer (builds with gcc): replays files and directories, then, with
 * -runs=N, mutates the inputs it was given (byte flips, inserts, splices of corpus lines) N times. Not a
 * coverage-guided fuzzer; it keeps the target building and running everywhere, and makes crashes replayable. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUTS 512

static uint8_t *s_in[MAX_INPUTS];
static size_t s_len[MAX_INPUTS];
static int s_n;

static void load(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        exit(2);
    }
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') {
                continue;
            }
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            load(p);
        }
        if (d) {
            closedir(d);
        }
        return;
    }
    FILE *f = fopen(path, "rb");
    if (!f || s_n >= MAX_INPUTS) {
        if (f) {
            fclose(f);
        }
        return;
    }
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    size_t n = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    s_in[s_n] = buf;
    s_len[s_n] = n;
    s_n++;
    LLVMFuzzerTestOneInput(buf, n);
}

static uint32_t s_rng = 2463534242u;
static uint32_t rnd(void)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 17;
    s_rng ^= s_rng << 5;
    return s_rng;
}

int main(int argc, char **argv)
{
    long runs = 0;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "-runs=", 6) == 0) {
            runs = strtol(argv[i] + 6, NULL, 10);
        } else if (strncmp(argv[i], "-seed=", 6) == 0) {
            s_rng = (uint32_t)strtoul(argv[i] + 6, NULL, 10) | 1u;
        } else if (argv[i][0] != '-') {
            load(argv[i]);
        }
    }
    printf("replayed %d inputs\n", s_n);
    if (runs > 0 && s_n > 0) {
        uint8_t *buf = malloc(1 << 16);
        clock_t t0 = clock();
        for (long r = 0; r < runs; r++) {
            int a = (int)(rnd() % (uint32_t)s_n), b = (int)(rnd() % (uint32_t)s_n);
            size_t n = s_len[a] < (1 << 15) ? s_len[a] : (1 << 15);
            memcpy(buf, s_in[a], n);
            int edits = 1 + (int)(rnd() % 8);
            for (int e = 0; e < edits && n > 0; e++) {
                size_t at = rnd() % n;
                switch (rnd() % 5) {
                case 0:
                    buf[at] ^= (uint8_t)(1u << (rnd() % 8));
                    break;
                case 1:
                    buf[at] = (uint8_t)rnd();
                    break;
                case 2: /* splice the start of another input in */
                    if (s_len[b] && n + s_len[b] < (1 << 16)) {
                        size_t k = rnd() % s_len[b] + 1;
                        memmove(buf + at + k, buf + at, n - at);
                        memcpy(buf + at, s_in[b], k);
                        n += k;
                    }
                    break;
                case 3:
                    n = at; /* truncate */
                    break;
                default: { /* interesting bytes */
                    static const uint8_t I[] = {'"', '{', '}', '\n', '\\', 0, 0xff, '@', ' ', '-', '9'};
                    buf[at] = I[rnd() % sizeof I];
                }
                }
            }
            LLVMFuzzerTestOneInput(buf, n);
        }
        double s = (double)(clock() - t0) / CLOCKS_PER_SEC;
        printf("ran %ld mutated inputs in %.1f s (%.0f exec/s)\n", runs, s, s > 0 ? runs / s : 0);
        free(buf);
    }
    for (int i = 0; i < s_n; i++) {
        free(s_in[i]);
    }
    return 0;
}
