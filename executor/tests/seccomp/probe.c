/* Calls each system call named on the command line with harmless arguments
 * and prints "name errno" (0: it succeeded). Built static by the tests. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* A child asks to be traced by this process (its parent), as under strace
 * or gdb: the answer is the child's PTRACE_TRACEME result. */
static long ptrace_child(void) {
    int status = 0;
    pid_t pid = fork();
    if (pid == 0) _exit(ptrace(PTRACE_TRACEME, 0, NULL, NULL) == 0 ? 0 : errno);
    if (pid < 0) return -1;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    errno = WIFEXITED(status) ? WEXITSTATUS(status) : EINVAL;
    return -1;
}

static long fork_like(long flags) {
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid((pid_t)pid, NULL, 0);
    return pid;
}

#ifdef __x86_64__
/* A system call through the i386 ABI (int 0x80) from this 64-bit process. */
static long i386_call(long nr, long arg) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(arg) : "memory");
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}
#endif

static long call(const char *name) {
    if (!strcmp(name, "unshare_user")) return unshare(CLONE_NEWUSER);
    if (!strcmp(name, "unshare_mount")) return unshare(CLONE_NEWNS);
    if (!strcmp(name, "clone_user")) return fork_like(CLONE_NEWUSER);
    if (!strcmp(name, "clone_plain")) return fork_like(0);
    if (!strcmp(name, "clone3")) {
        unsigned long long args[11] = {0};
        args[4] = SIGCHLD; /* exit_signal */
        long pid = syscall(SYS_clone3, args, sizeof args);
        if (pid == 0) _exit(0);
        if (pid > 0) waitpid((pid_t)pid, NULL, 0);
        return pid;
    }
    if (!strcmp(name, "mount")) return mount("none", "/tmp", "tmpfs", 0, NULL);
    if (!strcmp(name, "keyctl")) return syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0);
    if (!strcmp(name, "add_key")) return syscall(SYS_add_key, "user", "kiln", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    if (!strcmp(name, "bpf")) return syscall(SYS_bpf, 0, NULL, 0);
    if (!strcmp(name, "perf_event_open")) return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0);
    if (!strcmp(name, "personality_bsd")) return personality(PER_BSD);
    if (!strcmp(name, "personality_query")) return personality(0xffffffff);
    if (!strcmp(name, "socket_vsock")) return socket(40, SOCK_STREAM, 0);
    if (!strcmp(name, "socket_alg")) return socket(38, SOCK_SEQPACKET, 0);
    if (!strcmp(name, "socket_inet")) return socket(AF_INET, SOCK_STREAM, 0);
    if (!strcmp(name, "ptrace_traceme")) return ptrace_child();
    if (!strcmp(name, "getpid")) return getpid();
    /* A number far above every system call the profile names. */
    if (!strcmp(name, "nr_1000")) return syscall(1000);
#ifdef __x86_64__
    if (!strcmp(name, "i386_getpid")) return i386_call(20, 0);
    if (!strcmp(name, "i386_unshare_user")) return i386_call(310, CLONE_NEWUSER);
#endif
    errno = EINVAL;
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long ret = call(argv[i]);
        printf("%s %d\n", argv[i], ret < 0 ? errno : 0);
    }
    return 0;
}
