/* hostile: a plugin that tries to get out, for kiln's containment tests.
 *
 *     hostile MODE
 *
 * Escape attempts (abs, dotdot, symlink, write, env) print what they tried
 * and exit 99 if anything got through, 0 if everything was refused.
 * Resource abuse (spin, alloc, flood) never ends on its own. `trap`
 * traps, `exit` exits with status 7, and `clock` writes what the clock and
 * the random source say to /clock.txt.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static int breaches = 0;

static void try_read(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        char buf[64];
        ssize_t n = read(fd, buf, sizeof buf);
        printf("READ %s (%zd bytes)\n", path, n);
        breaches++;
        close(fd);
    } else {
        printf("refused read %s: %s\n", path, strerror(errno));
    }
}

static void try_write(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        write(fd, "breach\n", 7);
        printf("WROTE %s\n", path);
        close(fd);
    } else {
        printf("refused write %s: %s\n", path, strerror(errno));
    }
}

__attribute__((noinline)) static void crash_here(void) {
    __builtin_trap();
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "abs")) {
        try_read("/etc/passwd");
        try_read("/etc/hostname");
        try_read("/proc/self/environ");
        try_read("/root/.bashrc");
    } else if (!strcmp(mode, "dotdot")) {
        try_read("../../../../../../etc/passwd");
        try_read("/../etc/passwd");
        try_read("/mnt/ro/../../../../etc/passwd");
        try_read("./../../etc/hostname");
    } else if (!strcmp(mode, "symlink")) {
        /* /escape -> /etc and /up -> ../../../.. are planted by the spec. */
        try_read("/escape/passwd");
        try_read("/up/etc/passwd");
        if (symlink("/etc", "/mine") == 0) try_read("/mine/passwd");
        if (symlink("../../../../../../etc", "/mine-rel") == 0) try_read("/mine-rel/passwd");
    } else if (!strcmp(mode, "write")) {
        try_write("/../../../../tmp/kiln-breach");
        try_write("/escape/kiln-breach");
        try_write("/up/tmp/kiln-breach");
        try_write("/mnt/ro/kiln-breach");
        /* A write that goes through (to the stage itself) counts for nothing. */
        FILE *f = fopen("/inside.txt", "w");
        if (f) { fputs("inside\n", f); fclose(f); }
    } else if (!strcmp(mode, "env")) {
        FILE *f = fopen("/env.txt", "w");
        for (char **e = environ; e && *e; e++) fprintf(f, "%s\n", *e);
        fclose(f);
    } else if (!strcmp(mode, "spin")) {
        volatile uint64_t n = 0;
        for (;;) n++;
    } else if (!strcmp(mode, "alloc")) {
        for (;;) {
            char *p = malloc(1 << 20);
            if (!p) abort();
            memset(p, 1, 1 << 20);
            /* Keep the pointer reachable so the allocation is not optimized out. */
            __asm__ volatile("" : : "r"(p) : "memory");
        }
    } else if (!strcmp(mode, "flood")) {
        char line[1024];
        memset(line, 'x', sizeof line - 1);
        line[sizeof line - 1] = '\n';
        for (;;) fwrite(line, 1, sizeof line, stdout);
    } else if (!strcmp(mode, "trap")) {
        crash_here();
    } else if (!strcmp(mode, "exit")) {
        fprintf(stderr, "giving up\n");
        return 7;
    } else if (!strcmp(mode, "clock")) {
        FILE *f = fopen("/clock.txt", "w");
        struct timespec a, b, w;
        clock_gettime(CLOCK_MONOTONIC, &a);
        clock_gettime(CLOCK_MONOTONIC, &b);
        clock_gettime(CLOCK_REALTIME, &w);
        unsigned char r[16];
        getentropy(r, sizeof r);
        fprintf(f, "wall %lld.%09ld\nmono %lld.%09ld -> %lld.%09ld\nrandom ",
                (long long)w.tv_sec, w.tv_nsec, (long long)a.tv_sec, a.tv_nsec,
                (long long)b.tv_sec, b.tv_nsec);
        for (int i = 0; i < 16; i++) fprintf(f, "%02x", r[i]);
        fprintf(f, "\nrand %d\n", rand());
        fclose(f);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    return breaches ? 99 : 0;
}
