/* Asks the ssh agent at $SSH_AUTH_SOCK for its identities (the agent
 * protocol's REQUEST_IDENTITIES) and prints their count, then one comment a
 * line. Built static by tests/build_ssh.rs, so it runs in any image. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int read_full(int fd, unsigned char *buf, size_t n) {
    while (n > 0) {
        ssize_t got = read(fd, buf, n);
        if (got <= 0) return -1;
        buf += got;
        n -= (size_t)got;
    }
    return 0;
}

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

int main(void) {
    const char *path = getenv("SSH_AUTH_SOCK");
    if (!path) {
        fprintf(stderr, "SSH_AUTH_SOCK is not set\n");
        return 2;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("connect");
        return 3;
    }
    const unsigned char request[5] = {0, 0, 0, 1, 11};
    if (write(fd, request, sizeof request) != sizeof request) return 4;
    unsigned char header[4];
    if (read_full(fd, header, 4) < 0) return 5;
    uint32_t len = be32(header);
    unsigned char *msg = malloc(len);
    if (!msg || len < 5 || read_full(fd, msg, len) < 0) return 6;
    if (msg[0] != 12) {
        fprintf(stderr, "unexpected answer %d\n", msg[0]);
        return 7;
    }
    uint32_t count = be32(msg + 1);
    printf("%u\n", count);
    size_t off = 5;
    for (uint32_t i = 0; i < count && off + 4 <= len; i++) {
        off += 4 + be32(msg + off);
        uint32_t comment = be32(msg + off);
        off += 4;
        printf("%.*s\n", (int)comment, (const char *)(msg + off));
        off += comment;
    }
    return 0;
}
