/* vmxaddr live: PID 1's last step inside the Bochs-run Linux (L0).
 *
 * It maps one fixed buffer (BUF_VA, locked) and stops the emulator with Bochs' magic
 * breakpoint (xchg %bx,%bx).  The host side (libvmxaddr_bochs.so in Bochs) saves the machine
 * there once (the saved state), and on every restored run loads a job into the buffer before
 * continuing: the client executable and its input.  The stub runs the client, puts its output
 * back into the buffer and stops again, so the host dumps it in one piece.  The saved state
 * therefore depends only on the kernel, its modules and this file, never on the client.
 *
 * Buffer: [0, 4096) header (struct job), then the client executable, then its input; the
 * output replaces them from offset 4096 (out_len bytes).
 *
 * The client says "done" on a pipe (fd in $VMXADDR_DONE_FD) once its output file is complete;
 * the stub stops then, without waiting for the client's exit, whose VM teardown costs ~1 Bochs
 * CPU-s and nobody waits for (the host ends Bochs after the dump).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF_VA 0x200000000UL
#define BUF_SIZE (96UL << 20)
#define JOB_MAGIC 0x4a4c4d56u /* "VMLJ" */
#define OUT_MAGIC 0x4f4c4d56u /* "VMLO" */

struct job {
    uint32_t magic, version;
    uint64_t exe_len, in_len;
    uint64_t out_len; /* set by the stub */
    int32_t status;   /* client's wait status */
    uint32_t out_magic;
    char args[256];   /* extra arguments, space separated */
};

static void magic_break(void) { __asm__ volatile("xchg %%bx, %%bx" ::: "memory"); }

static int write_file(const char *path, const void *p, uint64_t n, int mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) return -1;
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n > (1u << 20) ? (1u << 20) : n);
        if (w <= 0) { close(fd); return -1; }
        c += w; n -= (uint64_t)w;
    }
    return close(fd);
}

static uint64_t read_file(const char *path, char *p, uint64_t max) {
    int fd = open(path, O_RDONLY);
    uint64_t n = 0;
    if (fd < 0) return 0;
    for (;;) {
        ssize_t r = read(fd, p + n, max - n > (1u << 20) ? (1u << 20) : max - n);
        if (r <= 0) break;
        n += (uint64_t)r;
        if (n == max) break;
    }
    close(fd);
    return n;
}

int main(void) {
    char *buf = mmap((void *)BUF_VA, BUF_SIZE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) { perror("stub: mmap"); return 1; }
    mlockall(MCL_CURRENT | MCL_FUTURE);
    struct job *j = (struct job *)buf;
    printf("VMXADDR-STUB ready\n");
    fflush(stdout);
    for (;;) {
        j->magic = 0;
        magic_break(); /* saved here; a restored run loads the job here */
        if (j->magic != JOB_MAGIC || j->exe_len == 0 ||
            4096 + j->exe_len + j->in_len > BUF_SIZE) {
            j->out_magic = OUT_MAGIC; j->out_len = 0; j->status = -1;
            continue;
        }
        write_file("/tmp/client", buf + 4096, j->exe_len, 0755);
        write_file("/tmp/in.bin", buf + 4096 + j->exe_len, j->in_len, 0644);
        unlink("/tmp/out.bin");
        int done[2];
        if (pipe(done) != 0) done[0] = done[1] = -1;
        pid_t pid = fork();
        if (pid == 0) {
            char fdnum[16];
            snprintf(fdnum, sizeof fdnum, "%d", done[1]);
            setenv("VMXADDR_DONE_FD", fdnum, 1);
            close(done[0]);
            int log = open("/tmp/log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
            dup2(log, 1); dup2(log, 2);
            char *argv[40]; int argc = 0;
            argv[argc++] = "/tmp/client"; argv[argc++] = "/tmp/in.bin"; argv[argc++] = "/tmp/out.bin";
            j->args[sizeof j->args - 1] = 0;
            for (char *t = strtok(j->args, " "); t && argc < 38; t = strtok(NULL, " ")) argv[argc++] = t;
            argv[argc] = NULL;
            execv(argv[0], argv);
            _exit(127);
        }
        int st = 0;
        char byte;
        close(done[1]);
        /* one byte: the output is complete (the client may still be exiting); EOF: it ended */
        if (done[0] < 0 || read(done[0], &byte, 1) != 1) waitpid(pid, &st, 0);
        close(done[0]);
        j->status = st;
        j->out_len = read_file("/tmp/out.bin", buf + 4096, BUF_SIZE - 4096 - 65536);
        /* the client's messages go last, after the output, as a NUL-terminated tail */
        uint64_t lg = read_file("/tmp/log", buf + 4096 + j->out_len, 65535);
        buf[4096 + j->out_len + lg] = 0;
        j->out_magic = OUT_MAGIC;
        j->exe_len = lg; /* reused: the log's length */
        magic_break(); /* the host dumps the buffer here */
    }
}
