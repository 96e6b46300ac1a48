/* vmxaddr live: the L0 client of /dev/kvm (runs in Linux under Bochs; compiled gcc -static).
 *
 *   client IN OUT [noprobes] [reload-shadow]
 *
 * Creates one VM whose vCPU has VMX (KVM_SET_CPUID2 with CPUID.1:ECX.VMX before CR4.VMXE is
 * set, IA32_FEATURE_CONTROL = 5, CR0 = PE|NE|WP|PG), runs an init stub in the guest (L1):
 * VMXON, VMCLEAR, VMPTRLD with KVM's own VMCS revision (IA32_VMX_BASIC as KVM reports it). Then
 * the cases: consecutive cases L1 can load itself (CPL 0, descriptors a GDT can hold; see
 * loopable()) go to guest memory in chunks, and one KVM_RUN runs a whole chunk in L1's loop
 * (l1.S): L1 loads each case's segments and registers, runs the instruction and records what it
 * observed. Any other case (CPL 3) takes one KVM_RUN of its own: KVM_SET_SREGS (the case's
 * segments, mode, CPL), KVM_SET_REGS (its registers), the instruction followed by HLT. What L1
 * observed: the instruction completed (RFLAGS holds VMfail's CF/ZF), or an exception handler ran
 * (vector, error code), or KVM stopped L1 otherwise (a shutdown: the chunk then goes on at the
 * next case).
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


#include "l1.h"

#define IN_MAGIC 0x434c4d56u  /* "VMLC" */
#define OUT_MAGIC 0x524c4d56u /* "VMLR" */
#define RAM (4u << 20)
#define SINK 0x200000u        /* every other linear 2-MByte page maps here */

struct lseg {
    uint64_t base; uint32_t limit; uint16_t selector;
    uint8_t type, s, dpl, present, db, l, g, unusable, pad[2];
} __attribute__((packed));
struct lcase {
    uint8_t code_size, cpl, len, flags; uint8_t code[15]; uint8_t pad[5];
    uint64_t regs[16]; uint64_t rflags;
    struct lseg seg[6]; /* es cs ss ds fs gs */
} __attribute__((packed));
/* flags: bit 0 the case ran in L1's loop, bit 1 L1 reloaded its VMCS after it (one more
   get_vmx_mem_address event), bit 2 its result record was overwritten (by a stray write), bit 3
   a VMCLEAR/VMPTRLD (L1 may reload after it; set here, where no stray write reaches) */
struct lres {
    uint32_t index; uint8_t kind, vector; uint16_t exit_reason;
    uint32_t error_code, err;
    uint64_t rip, rflags, flags, rsp;
} __attribute__((packed));
/* one KVM_RUN that ran cases: [first, first + count) of IN, in L1's loop or alone */
struct lrun { uint32_t first, count, loop; } __attribute__((packed));
struct outhdr {
    uint32_t magic, version, n, rec_size;
    uint32_t probes, vmx_revision, shadow, nruns;
    uint64_t fmt_off, fmt_len, raw_off, raw_len;
    double seconds_setup, seconds_cases, seconds_trace;
    uint64_t runs_off;
} __attribute__((packed));

enum { K_SHUTDOWN = 3, K_OTHER = 4, K_IOCTL = 5 };
/* 16-byte result record of l1.S (l1.h R_*) */
struct l1res { uint32_t tag; uint8_t kind, vector, reloaded, rflags; uint32_t error_code, pad; } __attribute__((packed));

/* l1.S */
extern const uint8_t l1_blob[], l1_blob_end[], l1_resume32[], l1_resume64[], l1_loop32[], l1_loop64[], l1_df32[];
#define BLOB_LIN(sym) (LIN(L1_BLOB) + (uint64_t)((sym) - l1_blob))

static int vcpu;
static struct kvm_run *run;
static uint8_t *mem;
static FILE *fmt;
static char *fmtbuf;
static size_t fmtlen;
static struct lrun *runs;
static uint32_t nruns;

/* Bochs' magic breakpoint: with "marks", the host's script records Bochs' CPU time here */
static int marks;
static void mark(void) { if (marks) __asm__ volatile("xchg %%bx, %%bx" ::: "memory"); }

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void die(const char *m) { fprintf(stderr, "client: %s: %s\n", m, strerror(errno)); exit(3); }
static void put64(uint32_t gpa, uint64_t v) { memcpy(mem + gpa, &v, 8); }
static void put32(uint32_t gpa, uint32_t v) { memcpy(mem + gpa, &v, 4); }

static int write_str(const char *path, const char *s, int append) {
    int fd = open(path, O_WRONLY | (append ? O_APPEND : O_TRUNC));
    if (fd < 0) return -1;
    ssize_t w = write(fd, s, strlen(s));
    close(fd);
    return w == (ssize_t)strlen(s) ? 0 : -1;
}

/* PROBES and PROBE_NAMES: generated from vmxaddr/live/images.py PROBES when the client is built */
#include "probes.h"
#define T "/sys/kernel/tracing/"

static void copy_file(const char *label, const char *path) {
    char buf[4096];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    ssize_t k = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (k > 0) { buf[k] = 0; fprintf(fmt, "%s\n%sEND\n", label, buf); }
}

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
    for (int i = 0; PROBE_NAMES[i]; i++) {
        char path[256], label[64];
        snprintf(path, sizeof path, T "events/vmxl/%s/format", PROBE_NAMES[i]);
        snprintf(label, sizeof label, "FORMAT %s", PROBE_NAMES[i]);
        copy_file(label, path);
    }
    if (!preset) {
        /* about 200 bytes of events per case; the ring buffer is allocated page by page in the
           emulator, so no larger than the batch needs */
        char kb[32];
        snprintf(kb, sizeof kb, "%u", 1024 + (uint32_t)((uint64_t)n * 320 / 1024));
        write_str(T "buffer_size_kb", kb, 0);
        write_str(T "events/vmxl/enable", "1", 0);
    }
    if (!preset) write_str(T "trace", "", 0); /* a preset buffer holds nothing yet: no reset (0.4 CPU-s) */
    write_str(T "tracing_on", "1", 0);
    return ok;
}

static uint64_t descriptor(uint64_t base, uint32_t limit, uint8_t access, uint8_t flags) {
    return (limit & 0xFFFFull) | ((base & 0xFFFFFFull) << 16) | ((uint64_t)access << 40) |
           ((uint64_t)((limit >> 16) & 0xF) << 48) | ((uint64_t)flags << 52) | (((base >> 24) & 0xFF) << 56);
}

static void gdt_entry(uint32_t gpa, uint64_t base, uint32_t limit, uint8_t access, uint8_t flags) {
    put64(gpa, descriptor(base, limit, access, flags));
}

/* the GDT entries every path relies on (also rewritten after a shutdown: a stray write of a
   case may have hit the writable GDT page) */
static void write_gdt(uint32_t at) {
    put64(at, 0);
    gdt_entry(at + 0x08, 0, 0xFFFFF, 0x9B, 0xA); /* 64-bit code */
    gdt_entry(at + 0x10, 0, 0xFFFFF, 0x9B, 0xC); /* 32-bit code */
    gdt_entry(at + 0x18, 0, 0xFFFFF, 0x93, 0xC); /* data */
    gdt_entry(at + 0x20, SYS + TSS64, 0x67, 0x8B, 0); put64(at + 0x28, 0); /* TSS64 (base bits 63:32) */
    gdt_entry(at + 0x30, SYS + TSS32, 0x67, 0x8B, 0); /* TSS32 */
    gdt_entry(at + 0x38, 0, 0xFFFFF, 0xF3, 0xC); /* data DPL 3 */
    if (at == GDT) {
        gdt_entry(at + SEL_CODE32, 0, 0xFFFFF, 0x9B, 0xC);
        gdt_entry(at + SEL_CODE64, 0, 0xFFFFF, 0x9B, 0xA);
        gdt_entry(at + SEL_DATA, 0, 0xFFFFF, 0x93, 0xC);
        gdt_entry(at + SEL_TSS_LOOP, SYS + TSS_LOOP, 0x67, 0x8B, 0); /* busy: it is TR */
        gdt_entry(at + SEL_TSS_DF, SYS + TSS_DF, 0x67, 0x89, 0);     /* available */
    }
}

/* legacy mode's TSSs: the loop task's (TR; ESP0/SS0 for CPL-3 cases) and the #DF task's, entered
   through IDT32[8], a task gate: a fault whose delivery fails on the case's own stack ends there
   instead of in a triple fault (32-bit TSS layout: SDM Vol. 3A §7.2.1) */
static void write_tss_df(void) {
    memset(mem + TSS_LOOP, 0, 0x68);
    put32(TSS_LOOP + 4, SYS + IST1); put32(TSS_LOOP + 8, 0x18);
    put32(TSS_LOOP + 0x1C, 0x3000); /* a task switch loads CR3 from the TSS but never saves it */
    put32(TSS_LOOP + 0x64, 0x68u << 16); /* I/O map base beyond the limit: no bitmap */
    memset(mem + TSS_DF, 0, 0x68);
    put32(TSS_DF + 0x1C, 0x3000);                                /* CR3: the PAE PDPT */
    put32(TSS_DF + 0x20, (uint32_t)BLOB_LIN(l1_df32));            /* EIP */
    put32(TSS_DF + 0x24, 2);                                     /* EFLAGS */
    put32(TSS_DF + 0x38, SYS + DF_STACK);                        /* ESP */
    for (int o = 0x48; o <= 0x5C; o += 4) put32(TSS_DF + o, o == 0x4C ? SEL_CODE32 : SEL_DATA);
    put32(TSS_DF + 0x64, 0x68u << 16);
    put64(IDT32 + 8 * 8, ((uint64_t)SEL_TSS_DF << 16) | (0x85ull << 40)); /* task gate, P, DPL 0 */
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
        if (pa == SLOT_ALIAS) pa = SLOT; /* L1 writes the slot here (a page that was writable) */
        put64(0x6000 + 8 * i, pa | 0x65 | (rw ? 2 : 0));         /* P, US, A, D (+RW) */
    }
    for (int i = 0; i < 4; i++) put64(0x3000 + 8 * i, (i == 1 ? 0x4000 : 0x5000) | 1); /* PAE PDPTEs */
    write_gdt(OLD_GDT);
    write_gdt(GDT);
    /* IDTs: every vector to its 16-byte handler stub in l1.S, 64-bit through IST 1 */
    for (int v = 0; v < 256; v++) {
        uint64_t off = SYS + H64 + 16 * v;
        put64(IDT64 + 16 * v, (off & 0xFFFF) | ((uint64_t)SEL_CODE64 << 16) | (1ull << 32) | (0x8Eull << 40) |
                                  (((off >> 16) & 0xFFFF) << 48));
        put64(IDT64 + 8 + 16 * v, off >> 32);
        off = SYS + H32 + 16 * v;
        put64(IDT32 + 8 * v, (off & 0xFFFF) | ((uint64_t)SEL_CODE32 << 16) | (0x8Eull << 40) |
                                 (((off >> 16) & 0xFFFF) << 48));
    }
    memcpy(mem + L1_BLOB, l1_blob, l1_blob_end - l1_blob);
    put64(TSS64 + 4, SYS + RSP0);
    put64(TSS64 + 0x24, SYS + IST1);
    put32(TSS32 + 4, SYS + IST1); put32(TSS32 + 8, 0x18); /* ESP0, SS0 (CPL-3 cases) */
    write_tss_df();
    /* VMXON region, VMCS, and the pointers to them */
    memcpy(mem + 0x10000, &revision, 4);
    memcpy(mem + 0x11000, &revision, 4);
    put64(VMXON_PTR, 0x10000); put64(VMCS_PTR, 0x11000);
    static const uint8_t init[] = {
        0xF3, 0x0F, 0xC7, 0x34, 0x25, 0x00, 0x20, 0x01, 0x40, /* vmxon [SYS+0x12000] */
        0x66, 0x0F, 0xC7, 0x34, 0x25, 0x08, 0x20, 0x01, 0x40, /* vmclear [SYS+0x12008] */
        0x0F, 0xC7, 0x34, 0x25, 0x08, 0x20, 0x01, 0x40,       /* vmptrld [SYS+0x12008] */
        0xF4};
    memcpy(mem + INIT, init, sizeof init);
    memcpy(mem + REINIT, init + 18, sizeof init - 18);
    /* the ways back from the case's code to L1's loop (client.c loop_code) */
    uint8_t *t = mem + TRAMP64;
    uint64_t r64 = BLOB_LIN(l1_resume64);
    uint32_t r32 = (uint32_t)BLOB_LIN(l1_resume32);
    t[0] = 0xFF; t[1] = 0x25; memset(t + 2, 0, 4); memcpy(t + 6, &r64, 8);    /* jmp [rip+0] */
    t = mem + TRAMP16;
    t[0] = 0x66; t[1] = 0xEA; memcpy(t + 2, &r32, 4); t[6] = SEL_CODE32; t[7] = 0; /* jmp far ptr16:32 */
    t = mem + TRAMP32;
    t[0] = 0xEA; memcpy(t + 1, &r32, 4); t[5] = SEL_CODE32; t[6] = 0;         /* jmp far ptr16:32 */
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
    struct kvm_segment tr = {.base = SYS + (lm ? TSS64 : TSS_LOOP), .limit = 0x67,
                             .selector = lm ? 0x20 : SEL_TSS_LOOP, .type = 11, .present = 1};
    r->tr = tr;
    struct kvm_segment ldt = {.selector = 0, .type = 2, .unusable = 1};
    r->ldt = ldt;
    r->gdt.base = SYS + GDT; r->gdt.limit = GDT_LIMIT;
    r->idt.base = SYS + (lm ? IDT64 : IDT32); r->idt.limit = lm ? 0xFFF : 0x7FF;
}

/* L1's own flat segments in the mode of `code_size` (64: IA-32e mode, else legacy protected) */
static void flat_sregs(struct kvm_sregs *s, int code_size) {
    mode_sregs(s, code_size);
    int lm = code_size == 64;
    struct kvm_segment cs = {.base = 0, .limit = 0xFFFFFFFF, .selector = lm ? SEL_CODE64 : SEL_CODE32, .type = 11,
                             .present = 1, .s = 1, .l = lm, .db = !lm, .g = 1};
    struct kvm_segment ds = {.base = 0, .limit = 0xFFFFFFFF, .selector = SEL_DATA, .type = 3, .present = 1,
                             .s = 1, .db = 1, .g = 1};
    s->cs = cs; s->ds = s->es = s->fs = s->gs = s->ss = ds;
}

static void run_once(struct lres *res) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) { res->kind = K_IOCTL; res->vector = 3; res->err = errno; return; }
    res->exit_reason = run->exit_reason;
    struct kvm_regs r;
    ioctl(vcpu, KVM_GET_REGS, &r);
    res->rip = r.rip; res->rflags = r.rflags; res->rsp = r.rsp;
    if (run->exit_reason == KVM_EXIT_HLT) {
        res->kind = K_HLT;
    } else if (run->exit_reason == KVM_EXIT_SHUTDOWN) {
        res->kind = K_SHUTDOWN;
    } else {
        res->kind = K_OTHER;
        if (run->exit_reason == KVM_EXIT_FAIL_ENTRY) res->err = (uint32_t)run->fail_entry.hardware_entry_failure_reason;
        if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR) res->err = run->internal.suberror;
    }
}

static int run_stub(uint32_t rip) {
    struct kvm_sregs s;
    flat_sregs(&s, 64);
    if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS (stub)");
    /* RFLAGS.PF marks the stub's KVM_SET_REGS in the probe events (cases run with RFLAGS = 2) */
    struct kvm_regs r = {.rip = SYS + rip, .rflags = 6, .rsp = SYS + RSP0};
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

/* L1's index of its next case (l1.S LOAD_NEXT/STORE_NEXT: three copies, the majority wins) */
static void set_next(uint32_t v) { put32(NEXT0, v); put32(NEXT1, v); put32(NEXT2, v); }
static uint32_t get_next(void) {
    uint32_t a, b, c;
    memcpy(&a, mem + NEXT0, 4); memcpy(&b, mem + NEXT1, 4); memcpy(&c, mem + NEXT2, 4);
    return (a == b || a == c) ? a : b;
}

static void add_run(uint32_t first, uint32_t count, uint32_t loop) {
    static uint32_t cap;
    if (nruns == cap) {
        cap = cap ? 2 * cap : 1024;
        runs = realloc(runs, cap * sizeof *runs);
        if (!runs) die("realloc");
    }
    runs[nruns++] = (struct lrun){first, count, loop};
}

/* after a shutdown (or another unexpected exit) L1 is set up again: VMXON (VMfail if KVM kept L1
   in VMX operation), VMPTRLD, and the GDT, which a stray write may have hit */
static void recover(void) {
    write_gdt(GDT);
    write_tss_df();
    if (current_vmcs() == 0x11000) return; /* KVM kept L1 in VMX operation, our VMCS current */
    run_stub(INIT);
    run_stub(REINIT);
}

/* -- one case in its own KVM_RUN (CPL 3, or state a GDT cannot hold) -------------------------- */

static void run_single(const struct lcase *c, uint32_t index, struct lres *o) {
    struct l1res *r0 = (struct l1res *)(mem + RESULTS);
    memset(mem + SLOT, 0xF4, 32);
    memcpy(mem + SLOT, c->code, c->len > 15 ? 15 : c->len);
    /* an exception handler records into result 0 and halts (CTL: next 0, count 0) */
    memset(r0, 0, sizeof *r0);
    memset(mem + CASES, 0, 256);
    set_next(0); put32(COUNT, 0);
    struct kvm_sregs s;
    mode_sregs(&s, c->code_size);
    seg_from(&s.es, &c->seg[0]); seg_from(&s.cs, &c->seg[1]); seg_from(&s.ss, &c->seg[2]);
    seg_from(&s.ds, &c->seg[3]); seg_from(&s.fs, &c->seg[4]); seg_from(&s.gs, &c->seg[5]);
    add_run(index, 1, 0);
    if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) { o->kind = K_IOCTL; o->vector = 1; o->err = errno; return; }
    struct kvm_regs r;
    memcpy(&r, c->regs, sizeof c->regs); /* rax rbx rcx rdx rsi rdi rsp rbp r8..r15: see batch.py */
    r.rflags = 2;
    uint64_t mask = c->code_size == 64 ? ~0ull : c->code_size == 32 ? 0xFFFFFFFFull : 0xFFFFull;
    r.rip = c->code_size == 64 ? SYS + SLOT : ((SYS + SLOT - c->seg[1].base) & mask);
    if (ioctl(vcpu, KVM_SET_REGS, &r) < 0) { o->kind = K_IOCTL; o->vector = 2; o->err = errno; return; }
    run_once(o);
    if (o->kind == K_HLT && r0->tag == TAG) { /* a handler (or the #DF task) recorded it */
        o->kind = r0->kind; o->vector = r0->vector; o->error_code = r0->error_code;
    }
    if (o->kind == K_SHUTDOWN || o->kind == K_OTHER) {
        recover();
    } else if ((c->flags & 1) && current_vmcs() != 0x11000) {
        /* the VMCLEAR/VMPTRLD changed L1's current VMCS: load ours again. Asking KVM (nested
           state) instead of always reloading spares a mode switch, i.e. an MMU reset */
        run_stub(REINIT);
    }
}

/* -- cases in L1's loop ------------------------------------------------------------------------ */

/* the kvm_regs order of lcase.regs -> the encoding order of l1.S (rax rcx rdx rbx rsp rbp rsi rdi) */
static const int ENC_FROM_KVM[16] = {0, 2, 3, 1, 6, 7, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15};

static int canonical(uint64_t a) { return (uint64_t)((int64_t)(a << 16) >> 16) == a; }

static int fits_descriptor(const struct lseg *s) {
    /* limit as G says (a VM entry checks the same), base in 32 bits, present */
    int limit_ok = s->g ? (s->limit & 0xFFF) == 0xFFF : s->limit <= 0xFFFFF;
    return limit_ok && s->base >> 32 == 0 && s->present && s->s;
}

/* can L1 load this case itself? CPL 0, segments a descriptor can hold and a MOV to the segment
   register accepts (SDM Vol. 3A §5.4-5.6); anything else takes the one-case path */
static int loopable(const struct lcase *c) {
    const struct lseg *cs = &c->seg[1], *ss = &c->seg[2];
    int lm = c->code_size == 64;
    if (c->cpl != 0 || c->len == 0 || c->len > 15) return 0;
    if (!fits_descriptor(cs) || !(cs->type & 8) || cs->dpl != 0 || cs->l != lm || (lm && cs->db)) return 0;
    if (lm ? 0 : ((c->code_size == 32) != cs->db)) return 0;
    if (ss->unusable ? !lm : !(fits_descriptor(ss) && (ss->type & 0xA) == 2 && ss->dpl == 0)) return 0;
    for (int i = 0; i < 6; i++) {
        const struct lseg *d = &c->seg[i];
        if (i == 1 || i == 2 || d->unusable) continue;
        uint64_t base = d->base;
        struct lseg t = *d;
        if (i >= 4) { if (!canonical(base)) return 0; t.base = base & 0xFFFFFFFF; } /* the rest by WRMSR */
        if (!fits_descriptor(&t) || ((d->type & 8) && !(d->type & 2))) return 0; /* no execute-only */
    }
    if ((c->seg[4].unusable && !canonical(c->seg[4].base)) || (c->seg[5].unusable && !canonical(c->seg[5].base)))
        return 0;
    return 1;
}

static uint64_t case_descriptor(const struct lseg *s) {
    uint32_t limit = s->g ? s->limit >> 12 : s->limit;
    uint8_t access = (uint8_t)((s->type & 15) | (s->s << 4) | ((s->dpl & 3) << 5) | (s->present << 7));
    uint8_t flags = (uint8_t)((s->l << 1) | (s->db << 2) | (s->g << 3));
    return descriptor(s->base, limit, access, flags);
}

/* the case's code for the slot: the instruction, then the way back to resume32/64: a short jump
   back to a trampoline before the slot, or, when the trampoline would lie below the CS base
   (RIP < 48), a far jump forward */
static void loop_code(const struct lcase *c, uint64_t rip, uint8_t *code) {
    memset(code, 0xF4, 32);
    memcpy(code, c->code, c->len);
    uint8_t *p = code + c->len;
    uint32_t tramp = c->code_size == 64 ? TRAMP64 : c->code_size == 32 ? TRAMP32 : TRAMP16;
    if (c->code_size == 64 || rip >= 48) {
        p[0] = 0xEB;
        p[1] = (uint8_t)(int8_t)((int)tramp - (int)(SLOT + c->len + 2));
    } else {
        uint32_t r32 = (uint32_t)BLOB_LIN(l1_resume32);
        if (c->code_size == 16) *p++ = 0x66;
        p[0] = 0xEA; memcpy(p + 1, &r32, 4); p[5] = SEL_CODE32; p[6] = 0;
    }
}

static void put_case(const struct lcase *c, uint32_t j) {
    uint32_t at = CASES + 256 * j;
    memset(mem + at, 0, 256);
    uint16_t sel[6];
    for (int i = 0; i < 6; i++) {
        put64(at + C_DESC + 8 * i, case_descriptor(&c->seg[i]));
        sel[i] = c->seg[i].unusable ? 0 : SEL_CASE + 8 * i;
    }
    memcpy(mem + at + C_SEL, sel, sizeof sel);
    /* WRMSR only for an FS/GS base the descriptor (or a null selector, base 0) does not give */
    uint32_t wr_fs = c->seg[4].base != (c->seg[4].unusable ? 0 : (c->seg[4].base & 0xFFFFFFFF));
    uint32_t wr_gs = c->seg[5].base != (c->seg[5].unusable ? 0 : (c->seg[5].base & 0xFFFFFFFF));
    put32(at + C_FLAGS, (c->flags & 1) | wr_fs << 1 | wr_gs << 2);
    put64(at + C_FSBASE, c->seg[4].base);
    put64(at + C_GSBASE, c->seg[5].base);
    for (int i = 0; i < 16; i++) put64(at + C_REGS + 8 * i, c->regs[ENC_FROM_KVM[i]]);
    int lm = c->code_size == 64;
    uint64_t mask = lm ? ~0ull : c->code_size == 32 ? 0xFFFFFFFFull : 0xFFFFull;
    uint64_t rip = lm ? SYS + SLOT : ((SYS + SLOT - c->seg[1].base) & mask);
    if (lm) { put64(at + C_FAR, rip); put32(at + C_FAR + 8, SEL_CASE + 8); }
    else { put32(at + C_FAR, (uint32_t)rip); put32(at + C_FAR + 4, SEL_CASE + 8); }
    loop_code(c, rip, mem + at + C_CODE);
    if (j > 0 && !memcmp(mem + at + C_CODE, mem + at - 256 + C_CODE, 32)) put32(at + C_FLAGS, mem[at + C_FLAGS] | 8);
}

/* run cases [first, first + n) (all loopable, one mode: 64-bit or legacy) in L1's loop */
static void run_chunk(const struct lcase *cases, uint32_t first, uint32_t n, struct lres *res) {
    int lm = cases[first].code_size == 64;
    for (uint32_t j = 0; j < n; j++) put_case(&cases[first + j], j);
    memset(mem + RESULTS, 0, 16 * n);
    uint32_t start = 0;
    while (start < n) {
        set_next(start); put32(COUNT, n);
        struct kvm_sregs s;
        flat_sregs(&s, lm ? 64 : 32);
        struct kvm_regs r = {.rflags = 2, .rsp = SYS + LOOP_STACK,
                             .rip = lm ? BLOB_LIN(l1_loop64) : BLOB_LIN(l1_loop32)};
        struct lres x = {0};
        if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0 || ioctl(vcpu, KVM_SET_REGS, &r) < 0) die("KVM_SET_*REGS (loop)");
        run_once(&x);
        uint32_t stop = get_next();
        if (stop > n) stop = n;
        add_run(first + start, stop - start + (stop < n), 1);
        for (uint32_t j = start; j < stop; j++) {
            const struct l1res *l = (const struct l1res *)(mem + RESULTS + 16 * j);
            struct lres *o = &res[first + j];
            o->flags = 1 | (l->reloaded ? 2 : 0) | (cases[first + j].flags & 1 ? 8 : 0);
            if (l->tag != TAG + j) { o->kind = K_OTHER; o->flags |= 4; continue; }
            o->kind = l->kind; o->vector = l->vector; o->error_code = l->error_code;
            o->rflags = 2 | l->rflags;
            o->exit_reason = KVM_EXIT_HLT;
        }
        if (x.kind == K_HLT && stop >= n) break; /* the chunk is done */
        if (stop >= n) { recover(); break; }
        /* a HLT before the chunk's end is not L1's: after the case at `stop` L1 did not come back
           to its loop (rip says where it halted) */
        if (x.kind == K_HLT) x.kind = K_OTHER;
        /* L1 stopped at case `stop`: record how, set L1 up again, go on with the next one */
        struct lres *o = &res[first + stop];
        *o = x;
        o->flags = 1 | (cases[first + stop].flags & 1 ? 8 : 0); /* L1 may have reloaded before it stopped */
        recover();
        start = stop + 1;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: client IN OUT [noprobes] [shadow] [single]\n"); return 2; }
    int probes = 1, shadow = 0, single = 0;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "noprobes")) probes = 0;
        if (!strcmp(argv[i], "shadow")) shadow = 1;
        if (!strcmp(argv[i], "single")) single = 1; /* every case in its own KVM_RUN */
        if (!strcmp(argv[i], "marks")) marks = 1;
    }
    for (int i = 3; i < argc; i++)
        if (!strncmp(argv[i], "off=", 4)) { /* an event left out (to measure what each costs) */
            char path[256];
            snprintf(path, sizeof path, T "events/vmxl/%s/enable", argv[i] + 4);
            write_str(path, "0", 0);
        }
    mark(); /* "exec": the client runs */
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
    mark(); /* "vcpu": VM and vCPU created */
    build_guest(revision);
    if (ioctl(vcpu, KVM_GET_SREGS, &base_sregs) < 0) die("KVM_GET_SREGS");
    if (run_stub(INIT) != 0) { fprintf(stderr, "client: VMXON/VMCLEAR/VMPTRLD in L1 failed\n"); return 5; }
    mark(); /* "vmxon": L1 in VMX operation, its VMCS current */
    int nprobes = probes ? setup_probes(n) : 0;
    double t1 = now();
    mark(); /* "first": the first case starts */

    struct lres *res = calloc(n ? n : 1, sizeof *res);
    for (uint32_t i = 0; i < n; i++) res[i].index = i;
    for (uint32_t i = 0; i < n;) {
        if (single || !loopable(&cases[i])) {
            run_single(&cases[i], i, &res[i]);
            i++;
            continue;
        }
        /* a chunk: consecutive loopable cases of one mode (64-bit, or legacy 16/32-bit) */
        int lm = cases[i].code_size == 64;
        uint32_t k = i + 1;
        while (k < n && k - i < CHUNK && loopable(&cases[k]) && (cases[k].code_size == 64) == lm) k++;
        run_chunk(cases, i, k - i, res);
        i = k;
    }
    double t2 = now();
    mark(); /* "cases": all cases done */

    FILE *out = fopen(argv[2], "wb");
    if (!out) die("open OUT");
    struct outhdr h = {.magic = OUT_MAGIC, .version = 2, .n = n, .rec_size = sizeof(struct lres),
                       .probes = nprobes, .vmx_revision = revision, .shadow = shadow, .nruns = nruns};
    h.seconds_setup = t1 - t0; h.seconds_cases = t2 - t1;
    fwrite(&h, sizeof h, 1, out);
    fwrite(res, sizeof *res, n, out);
    if (nprobes) {
        write_str(T "tracing_on", "0", 0);
        copy_file("STATS", T "per_cpu/cpu0/stats"); /* overrun: events lost when the buffer filled */
    }
    fflush(fmt);
    h.fmt_off = sizeof h + (uint64_t)n * sizeof *res;
    h.fmt_len = fmtlen;
    fwrite(fmtbuf, 1, fmtlen, out);
    h.raw_off = h.fmt_off + h.fmt_len;
    if (nprobes) {
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
    h.runs_off = h.raw_off + h.raw_len;
    fwrite(runs, sizeof *runs, nruns, out);
    h.seconds_trace = now() - t2;
    fseek(out, 0, SEEK_SET);
    fwrite(&h, sizeof h, 1, out);
    fclose(out);
    mark(); /* "written": the output file is complete */
    fflush(stdout);
    const char *done = getenv("VMXADDR_DONE_FD"); /* stub.c: it stops now, not after our exit */
    if (done && write(atoi(done), "d", 1) != 1) fprintf(stderr, "client: done pipe: %s\n", strerror(errno));
    return 0;
}
