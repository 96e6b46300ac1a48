/* vmxaddr live: the L0 client of /dev/kvm (runs in Linux under Bochs; compiled gcc -static).
 *
 *   client IN OUT [noprobes] [reload-shadow]
 *
 * Creates one VM whose vCPU has VMX (KVM_SET_CPUID2 with CPUID.1:ECX.VMX before CR4.VMXE is
 * set, IA32_FEATURE_CONTROL = 5, CR0 = PE|NE|WP|PG), runs an init stub in the guest (L1):
 * VMXON, VMCLEAR, VMPTRLD with KVM's own VMCS revision (IA32_VMX_BASIC as KVM reports it), then
 * for every case of IN one KVM_RUN: KVM_SET_SREGS (the case's segments, mode, CPL),
 * KVM_SET_REGS (its registers, RIP at the case's instruction), and the instruction followed by
 * HLT. What L1 observed is recorded: it reached the HLT (RFLAGS holds VMfail's CF/ZF), or an
 * exception handler (vector, error code popped by the handler), or KVM stopped it otherwise.
 * Kprobe events (tracefs) record what Bochs handed KVM (exit qualification and instruction
 * information at get_vmx_mem_address), its return value, the exception KVM queued and the
 * address KVM then accessed; their raw ring-buffer pages go to OUT unparsed.
 *
 * Layout shared with vmxaddr/live/batch.py (little endian, packed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define IN_MAGIC 0x434c4d56u  /* "VMLC" */
#define OUT_MAGIC 0x524c4d56u /* "VMLR" */
#define SYS 0x40000000ull     /* linear address of the system region (GPA 0) */
#define RAM (4u << 20)
#define SINK 0x200000u        /* every other linear 2-MByte page maps here */
#define SLOT 0x30000u         /* the case's instruction (GPA) */
#define HANDLERS 0x20000u
#define INIT 0x21000u
#define REINIT 0x21100u

struct lseg {
    uint64_t base; uint32_t limit; uint16_t selector;
    uint8_t type, s, dpl, present, db, l, g, unusable, pad[2];
} __attribute__((packed));
struct lcase {
    uint8_t code_size, cpl, len, flags; uint8_t code[15]; uint8_t pad[5];
    uint64_t regs[16]; uint64_t rflags;
    struct lseg seg[6]; /* es cs ss ds fs gs */
} __attribute__((packed));
struct lres {
    uint32_t index; uint8_t kind, vector; uint16_t exit_reason;
    uint32_t error_code, err;
    uint64_t rip, rflags, rax, rsp;
} __attribute__((packed));
struct outhdr {
    uint32_t magic, version, n, rec_size;
    uint32_t probes, vmx_revision, shadow, pad;
    uint64_t fmt_off, fmt_len, raw_off, raw_len;
    double seconds_setup, seconds_cases, seconds_trace;
    uint64_t pad2;
} __attribute__((packed));

enum { K_HLT = 1, K_EXC = 2, K_SHUTDOWN = 3, K_OTHER = 4, K_IOCTL = 5 };

static int vcpu;
static struct kvm_run *run;
static uint8_t *mem;
static FILE *fmt;
static char *fmtbuf;
static size_t fmtlen;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void die(const char *m) { fprintf(stderr, "client: %s: %s\n", m, strerror(errno)); exit(3); }
static void put64(uint32_t gpa, uint64_t v) { memcpy(mem + gpa, &v, 8); }

static int write_str(const char *path, const char *s, int append) {
    int fd = open(path, O_WRONLY | (append ? O_APPEND : O_TRUNC));
    if (fd < 0) return -1;
    ssize_t w = write(fd, s, strlen(s));
    close(fd);
    return w == (ssize_t)strlen(s) ? 0 : -1;
}

static const char *PROBES[] = {
    "p:vmxl/setregs kvm:kvm_arch_vcpu_ioctl_set_regs rip=+128(%si):x64 fl=+136(%si):x64",
    "p:vmxl/gvma kvm_intel:get_vmx_mem_address qual=%si:x64 info=%dx:x32 wr=%cx:u8 len=%r8:s32",
    "r:vmxl/gvmar kvm_intel:get_vmx_mem_address ret=$retval:s32",
    "p:vmxl/rd kvm:kvm_read_guest_virt gva=%si:x64 n=%cx:u32",
    "p:vmxl/wr kvm:kvm_write_guest_virt_system gva=%si:x64 n=%cx:u32",
    "p:vmxl/qe kvm:kvm_queue_exception_e nr=%si:u32 ec=%dx:u32",
    "p:vmxl/q kvm:kvm_queue_exception nr=%si:u32",
    NULL,
};
#define T "/sys/kernel/tracing/"

static int setup_probes(uint32_t n) {
    int ok = 0, preset = access(T "events/vmxl/gvma/format", R_OK) == 0;
    write_str(T "tracing_on", "0", 0);
    if (preset) {
        /* registered and enabled by the initramfs before the state was saved (images.py PROBES) */
        for (int i = 0; PROBES[i]; i++) ok++;
        fprintf(fmt, "PROBE PRESET\n");
    } else {
        write_str(T "kprobe_events", "", 0);
        for (int i = 0; PROBES[i]; i++) {
            int r = write_str(T "kprobe_events", PROBES[i], 1);
            fprintf(fmt, "PROBE %s %s\n", r ? "FAIL" : "OK", PROBES[i]);
            if (r == 0) ok++;
        }
    }
    /* event ids and formats, for batch.py to parse the raw pages */
    const char *names[] = {"setregs", "gvma", "gvmar", "rd", "wr", "qe", "q", NULL};
    for (int i = 0; names[i]; i++) {
        char path[256], buf[4096];
        snprintf(path, sizeof path, T "events/vmxl/%s/format", names[i]);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t k = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (k > 0) { buf[k] = 0; fprintf(fmt, "FORMAT %s\n%sEND\n", names[i], buf); }
    }
    if (!preset) {
        /* about 200 bytes of events per case; the ring buffer is allocated page by page in the
           emulator, so no larger than the batch needs */
        char kb[32];
        snprintf(kb, sizeof kb, "%u", 1024 + (uint32_t)((uint64_t)n * 320 / 1024));
        write_str(T "buffer_size_kb", kb, 0);
        write_str(T "events/vmxl/enable", "1", 0);
    }
    write_str(T "trace", "", 0);
    write_str(T "tracing_on", "1", 0);
    return ok;
}

static void gdt_entry(uint32_t gpa, uint64_t base, uint32_t limit, uint8_t access, uint8_t flags) {
    uint64_t d = (limit & 0xFFFFull) | ((base & 0xFFFFFFull) << 16) | ((uint64_t)access << 40) |
                 ((uint64_t)((limit >> 16) & 0xF) << 48) | ((uint64_t)flags << 52) | (((base >> 24) & 0xFF) << 56);
    put64(gpa, d);
}

static void build_guest(uint32_t revision) {
    /* page tables: SYS..SYS+2M -> GPA 0 (4-KByte pages, read-only but the stacks), the rest -> sink */
    for (int i = 0; i < 512; i++) {
        put64(0x1000 + 8 * i, 0x2000 | 7);                       /* PML4 -> PDPT64 */
        put64(0x2000 + 8 * i, (i == 1 ? 0x4000 : 0x5000) | 7);   /* PDPT64 */
        put64(0x4000 + 8 * i, i == 0 ? (0x6000 | 7) : (SINK | 0xE7)); /* PD_SYS */
        put64(0x5000 + 8 * i, SINK | 0xE7);                      /* PD_SINK: 2-MByte, A, D */
        uint64_t pa = (uint64_t)i << 12;
        int rw = (pa >= 0x80000 && pa < 0xA0000);
        put64(0x6000 + 8 * i, pa | 0x65 | (rw ? 2 : 0));         /* P, US, A, D (+RW) */
    }
    for (int i = 0; i < 4; i++) put64(0x3000 + 8 * i, (i == 1 ? 0x4000 : 0x5000) | 1); /* PAE PDPTEs */
    /* GDT */
    put64(0x7000, 0);
    gdt_entry(0x7008, 0, 0xFFFFF, 0x9B, 0xA); /* 0x08 64-bit code */
    gdt_entry(0x7010, 0, 0xFFFFF, 0x9B, 0xC); /* 0x10 32-bit code */
    gdt_entry(0x7018, 0, 0xFFFFF, 0x93, 0xC); /* 0x18 data */
    gdt_entry(0x7020, SYS + 0xA000, 0x67, 0x8B, 0); put64(0x7028, SYS >> 32); /* 0x20 TSS64 */
    gdt_entry(0x7030, SYS + 0xB000, 0x67, 0x8B, 0); /* 0x30 TSS32 */
    gdt_entry(0x7038, 0, 0xFFFFF, 0xF3, 0xC); /* 0x38 data DPL 3 */
    /* IDTs: every vector to its 8-byte handler, 64-bit through IST 1 */
    for (int v = 0; v < 256; v++) {
        uint64_t off = SYS + HANDLERS + 8 * v;
        put64(0x8000 + 16 * v, (off & 0xFFFF) | (0x08ull << 16) | (1ull << 32) | (0x8Eull << 40) |
                                   (((off >> 16) & 0xFFFF) << 48));
        put64(0x8008 + 16 * v, off >> 32);
        put64(0x9000 + 8 * v, (off & 0xFFFF) | (0x10ull << 16) | (0x8Eull << 40) | (((off >> 16) & 0xFFFF) << 48));
        int ec = v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30;
        uint8_t *h = mem + HANDLERS + 8 * v;
        h[0] = ec ? 0x58 : 0xF4; /* pop %eax/%rax: the error code */
        h[1] = 0xF4;
    }
    put64(0xA000 + 4, SYS + 0x8F000);  /* TSS64 RSP0 */
    put64(0xA000 + 0x24, SYS + 0x90000); /* IST1 */
    uint32_t esp0 = SYS + 0x90000, ss0 = 0x18;
    memcpy(mem + 0xB000 + 4, &esp0, 4); memcpy(mem + 0xB000 + 8, &ss0, 4);
    /* VMXON region, VMCS, and the pointers to them */
    memcpy(mem + 0x10000, &revision, 4);
    memcpy(mem + 0x11000, &revision, 4);
    put64(0x12000, 0x10000); put64(0x12008, 0x11000);
    static const uint8_t init[] = {
        0xF3, 0x0F, 0xC7, 0x34, 0x25, 0x00, 0x20, 0x01, 0x40, /* vmxon [SYS+0x12000] */
        0x66, 0x0F, 0xC7, 0x34, 0x25, 0x08, 0x20, 0x01, 0x40, /* vmclear [SYS+0x12008] */
        0x0F, 0xC7, 0x34, 0x25, 0x08, 0x20, 0x01, 0x40,       /* vmptrld [SYS+0x12008] */
        0xF4};
    memcpy(mem + INIT, init, sizeof init);
    memcpy(mem + REINIT, init + 18, sizeof init - 18);
}

static struct kvm_sregs base_sregs;

static void seg_from(struct kvm_segment *k, const struct lseg *s) {
    memset(k, 0, sizeof *k);
    k->base = s->base; k->limit = s->limit; k->selector = s->selector; k->type = s->type;
    k->s = s->s; k->dpl = s->dpl; k->present = s->present; k->db = s->db; k->l = s->l; k->g = s->g;
    k->unusable = s->unusable;
}

static void mode_sregs(struct kvm_sregs *r, int code_size) {
    *r = base_sregs;
    r->cr0 = 0x80010031; r->cr4 = 0x2020; /* PG WP NE ET PE; VMXE PAE */
    int lm = code_size == 64;
    r->efer = lm ? 0x500 : 0;
    r->cr3 = lm ? 0x1000 : 0x3000;
    struct kvm_segment tr = {.base = SYS + (lm ? 0xA000 : 0xB000), .limit = 0x67, .selector = lm ? 0x20 : 0x30,
                             .type = 11, .present = 1};
    r->tr = tr;
    struct kvm_segment ldt = {.selector = 0, .type = 2, .unusable = 1};
    r->ldt = ldt;
    r->gdt.base = SYS + 0x7000; r->gdt.limit = 0x47;
    r->idt.base = SYS + (lm ? 0x8000 : 0x9000); r->idt.limit = lm ? 0xFFF : 0x7FF;
}

static int run_once(struct lres *res) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) { res->kind = K_IOCTL; res->vector = 3; res->err = errno; return -1; }
    res->exit_reason = run->exit_reason;
    struct kvm_regs r;
    ioctl(vcpu, KVM_GET_REGS, &r);
    res->rip = r.rip; res->rflags = r.rflags; res->rax = r.rax; res->rsp = r.rsp;
    if (run->exit_reason == KVM_EXIT_HLT) {
        uint64_t h = SYS + HANDLERS;
        if (r.rip > h && r.rip <= h + 256 * 8) {
            res->kind = K_EXC;
            res->vector = (uint8_t)((r.rip - h - 1) / 8);
            res->error_code = (uint32_t)r.rax;
        } else {
            res->kind = K_HLT;
        }
    } else if (run->exit_reason == KVM_EXIT_SHUTDOWN) {
        res->kind = K_SHUTDOWN;
    } else {
        res->kind = K_OTHER;
        if (run->exit_reason == KVM_EXIT_FAIL_ENTRY) res->err = (uint32_t)run->fail_entry.hardware_entry_failure_reason;
        if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR) res->err = run->internal.suberror;
    }
    return 0;
}

static int run_stub(uint32_t rip) {
    struct kvm_sregs s;
    mode_sregs(&s, 64);
    struct kvm_segment cs = {.base = 0, .limit = 0xFFFFFFFF, .selector = 0x08, .type = 11, .present = 1,
                             .s = 1, .l = 1, .g = 1};
    struct kvm_segment ds = {.base = 0, .limit = 0xFFFFFFFF, .selector = 0x18, .type = 3, .present = 1,
                             .s = 1, .db = 1, .g = 1};
    s.cs = cs; s.ds = s.es = s.fs = s.gs = s.ss = ds;
    if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS (stub)");
    /* RFLAGS.PF marks the stub's KVM_SET_REGS in the probe events (cases run with RFLAGS = 2) */
    struct kvm_regs r = {.rip = SYS + rip, .rflags = 6, .rsp = SYS + 0x8F000};
    if (ioctl(vcpu, KVM_SET_REGS, &r) < 0) die("KVM_SET_REGS (stub)");
    struct lres res = {0};
    run_once(&res);
    return res.kind == K_HLT && (res.rflags & 0x41) == 0 ? 0 : -1;
}

static uint64_t current_vmcs(void) {
    static union { struct kvm_nested_state s; uint8_t b[16384]; } ns;
    ns.s.size = sizeof ns;
    if (ioctl(vcpu, KVM_GET_NESTED_STATE, &ns) < 0) return 0;
    return ns.s.hdr.vmx.vmcs12_pa;
}

static void reload_module(int shadow) {
    /* kvm_intel's enable_shadow_vmcs is read-only once loaded: unload and load again */
    char params[64];
    snprintf(params, sizeof params, "nested=1 enable_shadow_vmcs=%d", shadow);
    /* probes preset on kvm_intel (images.py) go first; setup_probes registers them again */
    write_str(T "events/vmxl/enable", "0", 0);
    write_str(T "kprobe_events", "", 0);
    if (syscall(SYS_delete_module, "kvm_intel", O_NONBLOCK) != 0) die("delete_module kvm_intel");
    int fd = open("/lib/kvm-intel.ko", O_RDONLY);
    if (fd < 0 || syscall(SYS_finit_module, fd, params, 0) != 0) die("finit_module kvm-intel.ko");
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: client IN OUT [noprobes] [shadow]\n"); return 2; }
    int probes = 1, shadow = 0;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "noprobes")) probes = 0;
        if (!strcmp(argv[i], "shadow")) shadow = 1;
    }
    double t0 = now();
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) die("open IN");
    uint8_t *in = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (in == MAP_FAILED) die("mmap IN");
    uint32_t magic, n;
    memcpy(&magic, in, 4); memcpy(&n, in + 8, 4);
    if (magic != IN_MAGIC || 32 + (uint64_t)n * sizeof(struct lcase) > (uint64_t)st.st_size) {
        fprintf(stderr, "client: bad input\n"); return 2;
    }
    const struct lcase *cases = (const struct lcase *)(in + 32);
    fmt = open_memstream(&fmtbuf, &fmtlen);
    if (shadow) reload_module(1);

    int kvm = open("/dev/kvm", O_RDWR);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    mem = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    struct kvm_userspace_memory_region region = {.slot = 0, .guest_phys_addr = 0, .memory_size = RAM,
                                                 .userspace_addr = (uintptr_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    struct { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[128]; } cpuid = {.h.nent = 128};
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    for (unsigned i = 0; i < cpuid.h.nent; i++)
        if (cpuid.e[i].function == 1 && !(cpuid.e[i].ecx & 0x20)) { fprintf(stderr, "client: no VMX in CPUID\n"); return 4; }
    if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) die("KVM_SET_CPUID2");
    struct { struct kvm_msrs h; struct kvm_msr_entry e[1]; } msrs = {.h.nmsrs = 1};
    msrs.e[0].index = 0x3a; msrs.e[0].data = 5;
    if (ioctl(vcpu, KVM_SET_MSRS, &msrs) != 1) die("KVM_SET_MSRS IA32_FEATURE_CONTROL");
    msrs.e[0].index = 0x480; msrs.e[0].data = 0;
    if (ioctl(vcpu, KVM_GET_MSRS, &msrs) != 1) die("KVM_GET_MSRS IA32_VMX_BASIC");
    uint32_t revision = (uint32_t)msrs.e[0].data & 0x7FFFFFFF;
    build_guest(revision);
    if (ioctl(vcpu, KVM_GET_SREGS, &base_sregs) < 0) die("KVM_GET_SREGS");
    if (run_stub(INIT) != 0) { fprintf(stderr, "client: VMXON/VMCLEAR/VMPTRLD in L1 failed\n"); return 5; }
    int nprobes = probes ? setup_probes(n) : 0;
    double t1 = now();

    struct lres *res = calloc(n ? n : 1, sizeof *res);
    for (uint32_t i = 0; i < n; i++) {
        const struct lcase *c = &cases[i];
        struct lres *o = &res[i];
        o->index = i;
        memset(mem + SLOT, 0xF4, 32);
        memcpy(mem + SLOT, c->code, c->len > 15 ? 15 : c->len);
        struct kvm_sregs s;
        mode_sregs(&s, c->code_size);
        seg_from(&s.es, &c->seg[0]); seg_from(&s.cs, &c->seg[1]); seg_from(&s.ss, &c->seg[2]);
        seg_from(&s.ds, &c->seg[3]); seg_from(&s.fs, &c->seg[4]); seg_from(&s.gs, &c->seg[5]);
        if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) { o->kind = K_IOCTL; o->vector = 1; o->err = errno; continue; }
        struct kvm_regs r;
        memcpy(&r, c->regs, sizeof c->regs); /* rax rbx rcx rdx rsi rdi rsp rbp r8..r15: see batch.py */
        r.rflags = 2;
        uint64_t mask = c->code_size == 64 ? ~0ull : c->code_size == 32 ? 0xFFFFFFFFull : 0xFFFFull;
        r.rip = c->code_size == 64 ? SYS + SLOT : ((SYS + SLOT - c->seg[1].base) & mask);
        if (ioctl(vcpu, KVM_SET_REGS, &r) < 0) { o->kind = K_IOCTL; o->vector = 2; o->err = errno; continue; }
        run_once(o);
        if (o->kind == K_SHUTDOWN || o->kind == K_OTHER) {
            /* a shutdown reset the vCPU: set L1 up again */
            run_stub(INIT);
            run_stub(REINIT);
        } else if ((c->flags & 1) && current_vmcs() != 0x11000) {
            /* the VMCLEAR/VMPTRLD changed L1's current VMCS: load ours again. Asking KVM (nested
               state) instead of always reloading spares a mode switch, i.e. an MMU reset */
            run_stub(REINIT);
        }
    }
    double t2 = now();

    FILE *out = fopen(argv[2], "wb");
    if (!out) die("open OUT");
    struct outhdr h = {.magic = OUT_MAGIC, .version = 1, .n = n, .rec_size = sizeof(struct lres),
                       .probes = nprobes, .vmx_revision = revision, .shadow = shadow};
    h.seconds_setup = t1 - t0; h.seconds_cases = t2 - t1;
    fwrite(&h, sizeof h, 1, out);
    fwrite(res, sizeof *res, n, out);
    fflush(fmt);
    h.fmt_off = sizeof h + (uint64_t)n * sizeof *res;
    h.fmt_len = fmtlen;
    fwrite(fmtbuf, 1, fmtlen, out);
    h.raw_off = h.fmt_off + h.fmt_len;
    if (nprobes) {
        write_str(T "tracing_on", "0", 0);
        int tfd = open(T "per_cpu/cpu0/trace_pipe_raw", O_RDONLY | O_NONBLOCK);
        static uint8_t page[4096];
        for (;;) {
            ssize_t k = tfd >= 0 ? read(tfd, page, sizeof page) : -1;
            if (k <= 0) break;
            fwrite(page, 1, k, out);
            h.raw_len += k;
        }
        if (tfd >= 0) close(tfd);
    }
    h.seconds_trace = now() - t2;
    fseek(out, 0, SEEK_SET);
    fwrite(&h, sizeof h, 1, out);
    fclose(out);
    return 0;
}
