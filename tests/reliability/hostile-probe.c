/* What a hostile `run` step tries, from inside kiln's sandbox.
 *
 * Built and run by a `run` step on the Debian test image (tests/reliability/
 * attack.py's hostile-run phase and tests/integration/hostile.rs). Each
 * attempt prints one line: `probe NAME held` when the sandbox stopped it,
 * `probe NAME ESCAPED: WHY` when it got through, `probe NAME works` for what
 * a build needs and must keep (threads, clone3's fallback). argv[1], when
 * given, is the pid of a process of the host that must stay out of reach.
 *
 * Every attempt is made so that it changes nothing even where it succeeds
 * (a knob written with its own value, a bind of a path that does not
 * exist, an unmount of what is not mounted), and the probe refuses to run
 * outside kiln's sandbox (whose hostname is `kiln`): it is a test, not an
 * attack.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static int escaped;

static void held(const char *name) { printf("probe %s held\n", name); }

static void escape(const char *name, const char *why) {
    printf("probe %s ESCAPED: %s\n", name, why);
    escaped++;
}

/* A call the seccomp filter must refuse: held on EPERM, escaped when the
 * kernel got to judge it (any other answer). */
static void refused(const char *name, long r) {
    if (r < 0 && errno == EPERM) {
        held(name);
    } else {
        char why[96];
        snprintf(why, sizeof why, "reached the kernel (returned %ld, errno %d)", r, r < 0 ? errno : 0);
        escape(name, why);
    }
}

/* A call that must fail: held when it does. */
static void must_fail(const char *name, long r) {
    if (r < 0) {
        held(name);
    } else {
        char why[64];
        snprintf(why, sizeof why, "returned %ld", r);
        escape(name, why);
    }
}

/* Write a kernel knob with the value it has: held when the write fails. */
static void write_same(const char *name, const char *path) {
    char value[256] = "";
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, value, sizeof value - 1) : -1;
    if (fd >= 0) close(fd);
    value[n > 0 ? n : 0] = 0;
    fd = open(path, O_WRONLY);
    if (fd < 0) {
        held(name);
        return;
    }
    long w = n > 0 ? write(fd, value, n) : write(fd, "", 0);
    close(fd);
    must_fail(name, w);
}

static void *thread_main(void *arg) { return arg; }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    char host[64] = "";
    if (gethostname(host, sizeof host) != 0 || strcmp(host, "kiln") != 0) {
        fprintf(stderr, "hostile-probe: not in kiln's sandbox (hostname `%s`): refusing to run\n", host);
        return 2;
    }

    int fd;

    /* The sandbox's root is not the host's: uid 0 maps elsewhere (or the
     * command is the only id of a namespace of a user's own). */
    FILE *f = fopen("/proc/self/uid_map", "r");
    unsigned inside = 1, outside = 1, count = 0;
    if (f && fscanf(f, "%u %u %u", &inside, &outside, &count) == 3 && inside == 0 && outside == 0)
        escape("host-root", "uid 0 in the sandbox is the host's uid 0");
    else
        held("host-root");
    if (f) fclose(f);

    write_same("core-pattern", "/proc/sys/kernel/core_pattern");
    write_same("modprobe", "/proc/sys/kernel/modprobe");
    write_same("proc-hostname", "/proc/sys/kernel/hostname");
    write_same("ip-forward", "/proc/sys/net/ipv4/ip_forward");
    write_same("uevent-helper", "/sys/kernel/uevent_helper");
    /* sysrq-trigger acts on any write: only its opening is tried. */
    fd = open("/proc/sysrq-trigger", O_WRONLY);
    if (fd >= 0) {
        close(fd);
        escape("sysrq", "opened /proc/sysrq-trigger for writing");
    } else {
        held("sysrq");
    }

    /* Masked files read as nothing. */
    fd = open("/proc/kcore", O_RDONLY);
    char buf[16];
    if (fd >= 0 && read(fd, buf, sizeof buf) > 0)
        escape("kcore", "read bytes of /proc/kcore");
    else
        held("kcore");
    if (fd >= 0) close(fd);

    /* What Docker's seccomp profile refuses, tried so that nothing would
     * change if it went through. */
    refused("mount", mount("/kiln-nonexistent", "/kiln-nonexistent", NULL, MS_BIND, NULL));
    refused("umount", umount2("/kiln-nonexistent", 0));
    refused("unshare-user", syscall(SYS_unshare, CLONE_NEWUSER | CLONE_NEWNS));
    refused("unshare-mount", syscall(SYS_unshare, CLONE_NEWNS));
    refused("clone-newns", syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, NULL, NULL, NULL, 0) == 0 ? (_exit(0), 0) : -1);
    int ns = open("/proc/self/ns/mnt", O_RDONLY);
    refused("setns", setns(ns, CLONE_NEWNS));
    if (ns >= 0) close(ns);
    refused("pivot-root", syscall(SYS_pivot_root, "/kiln-nonexistent", "/kiln-nonexistent"));
    refused("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    refused("add-key", syscall(SYS_add_key, "user", "kiln", NULL, 0, 0));
    refused("request-key", syscall(SYS_request_key, "user", "kiln-none", NULL, 0));
    refused("bpf", syscall(SYS_bpf, -1, NULL, 0));
    refused("perf-event-open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    refused("init-module", syscall(SYS_init_module, NULL, 0, ""));
    refused("delete-module", syscall(SYS_delete_module, "kiln-none", 0));
    refused("kexec-load", syscall(SYS_kexec_load, 0, 0, NULL, ~0UL));
    refused("reboot", syscall(SYS_reboot, 0, 0, 0, NULL));
    refused("open-by-handle-at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    refused("userfaultfd", syscall(SYS_userfaultfd, ~0));
    refused("io-uring", syscall(SYS_io_uring_setup, 0, NULL));
    refused("swapon", syscall(SYS_swapon, "/kiln-nonexistent", 0));
    refused("settimeofday", syscall(SYS_settimeofday, NULL, NULL));
    refused("clock-settime", syscall(SYS_clock_settime, -1, NULL));
    refused("sethostname", syscall(SYS_sethostname, NULL, ~0UL));
    refused("acct", syscall(SYS_acct, "/kiln-nonexistent"));
    refused("vsock", socket(40 /* AF_VSOCK */, SOCK_STREAM, 0));
    refused("personality", personality(0x0400000 /* READ_IMPLIES_EXEC */));
    /* Devices cannot be made: the sandbox's root owns no device. */
    must_fail("mknod-char", mknod("/tmp/kiln-null", S_IFCHR | 0666, makedev(1, 3)));
    must_fail("mknod-block", mknod("/tmp/kiln-vda", S_IFBLK | 0666, makedev(254, 0)));
    unlink("/tmp/kiln-null");
    unlink("/tmp/kiln-vda");

    /* Nothing but the standard streams crossed into the sandbox. */
    DIR *d = opendir("/proc/self/fd");
    int extra = 0;
    char seen[512] = "";
    if (d) {
        int mine = dirfd(d);
        struct dirent *e;
        while ((e = readdir(d))) {
            int n = atoi(e->d_name);
            if (e->d_name[0] == '.' || n <= 2 || n == mine) continue;
            char link[256], path[64];
            snprintf(path, sizeof path, "/proc/self/fd/%d", n);
            ssize_t l = readlink(path, link, sizeof link - 1);
            link[l > 0 ? l : 0] = 0;
            snprintf(seen + strlen(seen), sizeof seen - strlen(seen), "%d -> %s; ", n, link);
            extra++;
        }
        closedir(d);
    }
    if (extra) escape("descriptors", seen); else held("descriptors");

    /* A host process is out of reach: not visible, not signalled, not traced. */
    if (argc > 1) {
        pid_t host = atoi(argv[1]);
        char path[64], cmd[64] = "";
        snprintf(path, sizeof path, "/proc/%d/cmdline", host);
        int c = open(path, O_RDONLY);
        if (c >= 0) {
            ssize_t n = read(c, cmd, sizeof cmd - 1);
            cmd[n > 0 ? n : 0] = 0;
            close(c);
        }
        if (strstr(cmd, "kiln-canary"))
            escape("host-process", "the host's canary is visible");
        else
            held("host-process");
        /* Only the canary itself is attached to (a pid of the sandbox's own
         * with the same number must not be stopped). */
        if (strstr(cmd, "kiln-canary") && ptrace(PTRACE_ATTACH, host, NULL, NULL) == 0) {
            ptrace(PTRACE_DETACH, host, NULL, NULL);
            escape("ptrace-host", "attached to the host's canary");
        } else {
            held("ptrace-host");
        }
    }

    /* What builds need keeps working. */
    long r = syscall(SYS_clone3, NULL, 0);
    if (r < 0 && errno == ENOSYS)
        printf("probe clone3-falls-back works\n");
    else
        printf("probe clone3-falls-back FAILED: %ld errno %d\n", r, errno), escaped++;
    pthread_t t;
    if (pthread_create(&t, NULL, thread_main, NULL) == 0 && pthread_join(t, NULL) == 0)
        printf("probe threads works\n");
    else
        printf("probe threads FAILED\n"), escaped++;
    pid_t child = fork();
    if (child == 0) _exit(0);
    if (child > 0 && waitpid(child, NULL, 0) == child)
        printf("probe fork works\n");
    else
        printf("probe fork FAILED\n"), escaped++;

    printf("probe done: %d escaped\n", escaped);
    return 0;
}
