/* vmxaddr live: LD_PRELOAD library for Debian's bochs-bin 2.7 (debugger built in).
 *
 * Bochs' debugger asks readline() for every command once its -rc file is used up.  This
 * readline() answers from the script named by $VMXADDR_BOCHS_SCRIPT instead, one line per call,
 * and runs a few commands of its own that Bochs has no headless form of:
 *
 *   !save DIR            Bochs' own bx_real_sim_c::save_state(DIR) (the GUI's "save" button)
 *   !load FILE VA        copy FILE into the current context's linear memory at VA, page by page
 *   !dump FILE VA        write the stub's output (header + out_len + log, see stub.c) to FILE
 *   !mark LABEL          append "LABEL user_s sys_s wall_s" to $VMXADDR_BOCHS_MARKS
 *
 * With $VMXADDR_BOCHS_SERIAL_MARKS set, every line the guest writes to the serial port's file
 * (Bochs writes it with fputc) is appended there after Bochs' CPU time at its end: the boot's
 * phases, timed without a debugger stop.
 *
 * Any other line is handed to the debugger unchanged; at the end of the script it gets "quit".
 * Symbols are looked up by their mangled names in the executable (Bochs exports them for its
 * plugins); a missing one makes the command fail with a message, never a crash.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef _Bool (*save_fn)(void *sim, const char *path);
typedef _Bool (*xlate_fn)(void *cpu, unsigned long laddr, unsigned long *phy, unsigned long *lpf_mask, int verbose);
/* BX_MEM_C's members are static in Debian's build (BX_USE_MEM_SMF): no `this` */
typedef _Bool (*setmem_fn)(void *cpu, unsigned long addr, unsigned len, unsigned char *buf);
typedef _Bool (*readlin_fn)(unsigned cpu, unsigned long laddr, unsigned len, unsigned char *buf);

static FILE *script;
static FILE *log_out;

static void *sym(const char *name) {
    void *p = dlsym(RTLD_DEFAULT, name);
    if (!p) fprintf(log_out, "vmxaddr-preload: symbol %s not found\n", name);
    return p;
}

static void mark(const char *label) {
    const char *path = getenv("VMXADDR_BOCHS_MARKS");
    struct rusage ru;
    struct timespec ts;
    if (!path) return;
    getrusage(RUSAGE_SELF, &ru);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, "%s %.3f %.3f %.3f\n", label, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
            ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, ts.tv_sec + ts.tv_nsec / 1e9);
    fclose(f);
}

static int (*real_fputc)(int, FILE *);
static FILE *serial_file;   /* the FILE Bochs writes COM1 to, once recognised */
static char serial_line[240];
static size_t serial_len;

static int is_serial(FILE *f) {
    static FILE *checked[8];
    static int nchecked;
    char link[64], target[512];
    if (f == serial_file) return 1;
    for (int i = 0; i < nchecked; i++) if (checked[i] == f) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fileno(f));
    ssize_t k = readlink(link, target, sizeof target - 1);
    target[k > 0 ? k : 0] = 0;
    if (k > 10 && !strcmp(target + k - 10, "serial.txt")) { serial_file = f; return 1; }
    if (nchecked < 8) checked[nchecked++] = f;
    return 0;
}

int fputc(int c, FILE *stream) {
    if (!real_fputc) real_fputc = (int (*)(int, FILE *))dlsym(RTLD_NEXT, "fputc");
    int r = real_fputc(c, stream);
    const char *path = getenv("VMXADDR_BOCHS_SERIAL_MARKS");
    if (path && stream != stdout && stream != stderr && is_serial(stream)) {
        if (c == '\n') {
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            FILE *f = fopen(path, "a");
            if (f) {
                serial_line[serial_len] = 0;
                fprintf(f, "%.3f\t%s\n", ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                        ru.ru_stime.tv_usec / 1e6, serial_line);
                fclose(f);
            }
            serial_len = 0;
        } else if (c != '\r' && serial_len < sizeof serial_line - 1) {
            serial_line[serial_len++] = (char)(c >= 32 && c < 127 ? c : '?');
        }
    }
    return r;
}

static void *cpu0(void) {
    void ***arr = sym("bx_cpu_array");
    return arr ? (*arr)[0] : NULL;
}

static int do_save(const char *dir) {
    void **sim = sym("SIM");
    save_fn f = (save_fn)sym("_ZN13bx_real_sim_c10save_stateEPKc");
    if (!sim || !f) return -1;
    return f(*sim, dir) ? 0 : -1;
}

static int do_load(const char *file, unsigned long va) {
    xlate_fn xl = (xlate_fn)sym("_ZN8BX_CPU_C20dbg_xlate_linear2phyEmPmS0_b");
    setmem_fn set = (setmem_fn)sym("_ZN8BX_MEM_C11dbg_set_memEP8BX_CPU_CmjPh");
    void *cpu = cpu0();
    FILE *f = fopen(file, "rb");
    unsigned char page[4096];
    size_t n;
    if (!xl || !set || !cpu || !f) { if (f) fclose(f); return -1; }
    while ((n = fread(page, 1, sizeof page, f)) > 0) {
        unsigned long phy = 0, mask = 0;
        int okx = xl(cpu, va, &phy, &mask, 0) & 0xFF;
        int oks = okx ? set(cpu, phy, (unsigned)n, page) & 0xFF : 0;
        if (!okx || !oks) {
            fprintf(log_out, "vmxaddr-preload: cannot write linear %#lx (xlate %d -> %#lx, set %d)\n", va, okx, phy, oks);
            fclose(f);
            return -1;
        }
        va += n;
    }
    fclose(f);
    return 0;
}

static int do_dump(const char *file, unsigned long va) {
    readlin_fn rd = (readlin_fn)sym("_Z18bx_dbg_read_linearjmjPh");
    unsigned char page[4096];
    if (!rd || !rd(0, va, 4096, page)) return -1;
    /* struct job (stub.c): out_len at 24, the log's length (reused exe_len) at 8 */
    uint64_t out_len, log_len;
    memcpy(&out_len, page + 24, 8);
    memcpy(&log_len, page + 8, 8);
    uint64_t total = 4096 + out_len + log_len;
    FILE *f = fopen(file, "wb");
    if (!f) return -1;
    for (uint64_t off = 0; off < total; off += 4096) {
        unsigned len = total - off < 4096 ? (unsigned)(total - off) : 4096;
        if (!rd(0, va + off, len, page)) { fclose(f); return -1; }
        fwrite(page, 1, len, f);
    }
    return fclose(f);
}

char *readline(const char *prompt) {
    char line[4096];
    (void)prompt;
    if (!log_out) log_out = stderr;
    if (!script) {
        const char *path = getenv("VMXADDR_BOCHS_SCRIPT");
        script = path ? fopen(path, "r") : NULL;
        if (!script) return strdup("quit");
    }
    while (fgets(line, sizeof line, script)) {
        line[strcspn(line, "\r\n")] = 0;
        char a[2048] = "", b[2048] = "";
        unsigned long va = 0;
        int rc = 0;
        if (line[0] != '!') return strdup(line);
        if (sscanf(line, "!save %2047s", a) == 1) rc = do_save(a);
        else if (sscanf(line, "!load %2047s %lx", a, &va) == 2) rc = do_load(a, va);
        else if (sscanf(line, "!dump %2047s %lx", a, &va) == 2) rc = do_dump(a, va);
        else if (sscanf(line, "!mark %2047s", b) == 1) mark(b);
        else rc = -1;
        fprintf(stderr, "VMXADDR-PRELOAD %s %s\n", rc ? "FAIL" : "OK", line);
        if (rc) return strdup("quit");
    }
    return strdup("quit");
}
