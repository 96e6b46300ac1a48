/*
 * xen.h — what Xen's decode_vmx_inst() sees, in C: the world a copy of that function (and the
 * static helpers of vvmx.c it calls), extracted from a Xen tree, is compiled in
 * (vmxaddr.realcode.xen_compiled).
 *
 * The specification of "the hypervisor sees" for Xen 4.17's nested VMX: a fake vCPU whose VMCS
 * is vmxaddr's exit information and guest state (vmxaddr.h), the types the function names, and
 * each helper it calls re-implemented in a few lines over that VMCS. Written for vmxaddr (MIT);
 * no Xen text. Each helper names the Xen definition it stands for (Xen 4.17, Debian's xen
 * 4.17.5+72-g01140da4e8-1); re-read those definitions for another release: a wrong helper
 * changes answers silently.
 *
 * `current` is a thread-local pointer to the fake vCPU (the adapter sets it for the call), so
 * calls from several threads do not share a vCPU.
 *
 * The exception slot: hvm_inject_hw_exception() and hvm_inject_page_fault() record the vector,
 * the error code and where they were called (file and line: the extracted text keeps vvmx.c's
 * line numbers through #line) instead of injecting anything.
 *
 * Guest memory: vmxaddr models addresses, not memory. hvm_copy_from_guest_linear() always
 * succeeds, records the linear address and the length asked for, and writes zeroes, never more
 * than the operand the callers pass (an unsigned long): Xen asks for 1 << (address size + 1)
 * bytes, which for the reserved address-size values 3...7 is 16...256 bytes.
 */
#ifndef VMXADDR_XEN_SHIM_H
#define VMXADDR_XEN_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vmxaddr.h"

/* ---- Xen's types and annotations (xen/include/xen/types.h, compiler.h) ---------------------- */
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef bool bool_t;
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define cf_check

/* x86_emulate.h: what an emulation step returns. */
#define X86EMUL_OKAY 0
#define X86EMUL_UNHANDLEABLE 1
#define X86EMUL_EXCEPTION 2

/* Exception vectors (SDM Vol. 3A §6.3.1), under both of Xen's spellings (TRAP_* in 4.17,
 * X86_EXC_* later). X86_EVENT_NO_EC: "no error code". */
#define TRAP_invalid_op 6
#define TRAP_gp_fault 13
#define TRAP_page_fault 14
#define X86_EXC_UD TRAP_invalid_op
#define X86_EXC_GP TRAP_gp_fault
#define X86_EXC_PF TRAP_page_fault
#define X86_EVENT_NO_EC (-1)

/* The values vmx_guest_x86_mode() returns (later Xen names them X86_MODE_*). */
#define X86_MODE_REAL 0
#define X86_MODE_VM86 1
#define X86_MODE_16BIT 2
#define X86_MODE_32BIT 4
#define X86_MODE_64BIT 8

/* Xen's segment numbering: the instruction-information field's for ES...GS (SDM Vol. 3C §28.2.5). */
enum x86_segment {
	x86_seg_es, x86_seg_cs, x86_seg_ss, x86_seg_ds, x86_seg_fs, x86_seg_gs,
	x86_seg_tr, x86_seg_ldtr, x86_seg_gdtr, x86_seg_idtr, x86_seg_none
};

/* Xen's segment register (x86_emulate.h): attributes in the descriptor's layout (type, S, DPL,
 * P, AVL, L, D/B, G); decode_vmx_inst() reads only base and limit. */
struct segment_register {
	uint16_t sel;
	union {
		uint16_t attr;
		struct {
			uint16_t type:4, s:1, dpl:2, p:1, avl:1, l:1, db:1, g:1, pad:4;
		};
	};
	uint32_t limit;
	uint64_t base;
};

/* asm/hvm/vmx/vvmx.h: the VM-exit instruction-information field (SDM Vol. 3C §28.2.5, Table
 * "Format of the VM-Exit Instruction-Information Field as Used for VMCLEAR, VMPTRLD, VMPTRST,
 * VMXON, XRSTORS, and XSAVES" and the VMREAD/VMWRITE table), as bitfields, low bit first. */
union vmx_inst_info {
	struct {
		unsigned int scaling:2;           /* 1:0 */
		unsigned int rsvd2:1;             /* 2 */
		unsigned int reg1:4;              /* 6:3 (VMREAD/VMWRITE: the register operand) */
		unsigned int addr_size:3;         /* 9:7 (0: 16, 1: 32, 2: 64 bits) */
		unsigned int memreg:1;            /* 10 (1: register operand) */
		unsigned int rsvd11:4;            /* 14:11 */
		unsigned int segment:3;           /* 17:15 */
		unsigned int index_reg:4;         /* 21:18 */
		unsigned int index_reg_invalid:1; /* 22 */
		unsigned int base_reg:4;          /* 26:23 */
		unsigned int base_reg_invalid:1;  /* 27 */
		unsigned int reg2:4;              /* 31:28 */
	} fields;
	u32 word;
};

/* vvmx.c: what decode_vmx_inst() hands back to its caller. */
#define VMX_INST_MEMREG_TYPE_MEMORY 0
#define VMX_INST_MEMREG_TYPE_REG 1
struct vmx_inst_decoded {
	int type;
	union {
		struct {
			unsigned long mem;   /* the linear address */
			unsigned int len;    /* the length Xen accesses */
		};
		unsigned int reg1;
	};
	unsigned int reg2;
};

/* The guest's general registers as Xen keeps them on a VM exit (public/arch-x86/xen-x86_64.h
 * struct cpu_user_regs; RSP, RIP and RFLAGS are copied from the VMCS on every exit). Here only
 * the 16 registers, in the instruction-information numbering, and RIP/RFLAGS. */
struct cpu_user_regs {
	unsigned long gpr[16];
	unsigned long rip;
	unsigned long eflags;
};

/* ---- the fake vCPU ----------------------------------------------------------------------------- */

struct vmxaddr_xen_slot {
	int queued;             /* exceptions injected (the real code injects at most one) */
	unsigned int vector;
	int error_code;         /* X86_EVENT_NO_EC (-1): none */
	const char *file;       /* where the injecting call is (vvmx.c, or the adapter) */
	int line;
};

struct vcpu {
	const struct vmxaddr_state *state;  /* the VMCS guest-state area, as vmxaddr models it */
	const struct vmxaddr_exit *exit;    /* the VMCS exit-information fields */
	struct cpu_user_regs regs;          /* guest_cpu_user_regs() */
	struct vmxaddr_xen_slot exception;
	unsigned int registers_read;        /* bit n: decode_gpr(regs, n) was called */
	int segment_read;                   /* the segment hvm_get_segment_register() read, or -1 */
	int exit_qualification_read;        /* __vmread(EXIT_QUALIFICATION) was called */
	unsigned long fetch_address;        /* hvm_copy_from_guest_linear(): the linear address */
	unsigned int fetch_asked;           /* ... the length asked for (0: no fetch) */
	unsigned int fetch_copied;          /* ... the length written (at most sizeof(unsigned long)) */
	unsigned long unknown_vmcs_field;   /* a __vmread of a field this shim does not hold (0: none) */
};

static __thread struct vcpu *vmxaddr_xen_current;
#define current (vmxaddr_xen_current)

/* asm/current.h guest_cpu_user_regs() */
#define guest_cpu_user_regs() (&current->regs)

/* x86_emulate.h decode_gpr(): the register a 4-bit number names (the number truncated to 4
 * bits), all 64 bits of it. */
static inline unsigned long *decode_gpr(struct cpu_user_regs *regs, unsigned int modrm)
{
	current->registers_read |= 1u << (modrm & 15);
	return &regs->gpr[modrm & 15];
}

/* ---- the VMCS (field encodings: SDM Vol. 3D Appendix B) ------------------------------------- */
#define GUEST_ES_SELECTOR 0x0800u    /* + 2 x segment */
#define VMX_INSTRUCTION_INFO 0x440eu
#define GUEST_ES_LIMIT 0x4800u       /* + 2 x segment */
#define GUEST_ES_AR_BYTES 0x4814u    /* + 2 x segment */
#define GUEST_CS_AR_BYTES 0x4816u
#define GUEST_SS_AR_BYTES 0x4818u
#define EXIT_QUALIFICATION 0x6400u
#define GUEST_ES_BASE 0x6806u        /* + 2 x segment */
#define GUEST_SEG_SELECTOR(s) (GUEST_ES_SELECTOR + 2 * (s))
#define GUEST_SEG_LIMIT(s) (GUEST_ES_LIMIT + 2 * (s))
#define GUEST_SEG_AR_BYTES(s) (GUEST_ES_AR_BYTES + 2 * (s))
#define GUEST_SEG_BASE(s) (GUEST_ES_BASE + 2 * (s))

/* Segment access rights as the VMCS holds them (SDM Vol. 3C §25.4.1, Table "Format of Access
 * Rights"): type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15, unusable 16. */
#define X86_SEG_AR_DPL (3u << 5)
#define X86_SEG_AR_CS_LM_ACTIVE (1u << 13)
#define X86_SEG_AR_DEF_OP_SIZE (1u << 14)
#define X86_SEG_AR_SEG_UNUSABLE (1u << 16)

static inline unsigned long vmxaddr_xen_ar(const struct vmxaddr_segment *s, unsigned int dpl)
{
	return (s->type & 15u) | (unsigned)(s->s & 1) << 4 | (dpl & 3u) << 5 | (unsigned)(s->p & 1) << 7 |
	       (unsigned)(s->l & 1) << 13 | (unsigned)(s->db & 1) << 14 | (unsigned)(s->g & 1) << 15 |
	       (unsigned)(s->unusable ? 1 : 0) << 16;
}

/* asm/hvm/vmx/vmx.h __vmread(): one VMCS field of the current vCPU. The SS access rights carry
 * vmxaddr's CPL as their DPL (vmxaddr.h: `cpl` is SS.DPL as the VMCS holds it). A field not
 * listed here is recorded in unknown_vmcs_field (the adapter then reports an error) and reads 0. */
static inline void __vmread(unsigned long field, unsigned long *value)
{
	const struct vmxaddr_state *st = current->state;
	unsigned long f = field;

	if (f == VMX_INSTRUCTION_INFO) {
		*value = current->exit->instruction_info;
	} else if (f == EXIT_QUALIFICATION) {
		current->exit_qualification_read = 1;
		*value = current->exit->exit_qualification;
	} else if (f >= GUEST_ES_SELECTOR && f <= GUEST_SEG_SELECTOR(5) && !(f & 1)) {
		*value = st->seg[(f - GUEST_ES_SELECTOR) / 2].selector;
	} else if (f >= GUEST_ES_LIMIT && f <= GUEST_SEG_LIMIT(5) && !(f & 1)) {
		*value = st->seg[(f - GUEST_ES_LIMIT) / 2].limit;
	} else if (f >= GUEST_ES_AR_BYTES && f <= GUEST_SEG_AR_BYTES(5) && !(f & 1)) {
		unsigned int n = (unsigned)(f - GUEST_ES_AR_BYTES) / 2;
		*value = vmxaddr_xen_ar(&st->seg[n], n == x86_seg_ss ? st->cpl : st->seg[n].dpl);
	} else if (f >= GUEST_ES_BASE && f <= GUEST_SEG_BASE(5) && !(f & 1)) {
		*value = st->seg[(f - GUEST_ES_BASE) / 2].base;
	} else {
		current->unknown_vmcs_field = f ? f : ~0ul;
		*value = 0;
	}
}

/* ---- control registers and mode ----------------------------------------------------------- */
#define X86_CR0_PE (1ul << 0)
#define X86_EFLAGS_VM (1ul << 17)
#define EFER_LMA (1ul << 10)

/* asm/hvm/hvm.h hvm_long_mode_active(): EFER.LMA of the guest. */
static inline bool hvm_long_mode_active(const struct vcpu *v)
{
	return (v->state->efer & EFER_LMA) != 0;
}

/* vmx.c vmx_guest_x86_mode(): 0 with CR0.PE clear, 1 with RFLAGS.VM set, 8 in long mode with
 * CS.L set, else 4 or 2 by CS.D (from the CS access rights in the VMCS). */
static inline int vmx_guest_x86_mode(struct vcpu *v)
{
	unsigned long cs_ar;

	if (!(v->state->cr0 & X86_CR0_PE))
		return X86_MODE_REAL;
	if (guest_cpu_user_regs()->eflags & X86_EFLAGS_VM)
		return X86_MODE_VM86;
	__vmread(GUEST_CS_AR_BYTES, &cs_ar);
	if (hvm_long_mode_active(v) && (cs_ar & X86_SEG_AR_CS_LM_ACTIVE))
		return X86_MODE_64BIT;
	return (cs_ar & X86_SEG_AR_DEF_OP_SIZE) ? X86_MODE_32BIT : X86_MODE_16BIT;
}

/* asm/hvm/vmx/vmx.h vmx_get_cpl(): the DPL in the guest's SS access rights. */
static inline unsigned int vmx_get_cpl(void)
{
	unsigned long ar;

	__vmread(GUEST_SS_AR_BYTES, &ar);
	return (unsigned)((ar & X86_SEG_AR_DPL) >> 5);
}

/* hvm.c hvm_get_segment_register() over vmx.c vmx_get_segment_register(): selector, limit and
 * base from the VMCS; the attributes folded into the descriptor layout with P = !unusable; CS
 * always present; S and G recomputed for a present segment. (The vm86 emulation of real mode
 * on processors without unrestricted guest is not modelled: Xen #UDs there before decoding.) */
static inline void hvm_get_segment_register(struct vcpu *v, enum x86_segment seg, struct segment_register *reg)
{
	unsigned long sel, ar, limit;

	v->segment_read = (int)seg;
	if ((unsigned)seg > x86_seg_gs) {  /* TR/LDTR/GDTR/IDTR: not in vmxaddr's state */
		memset(reg, 0, sizeof(*reg));
		return;
	}
	__vmread(GUEST_SEG_SELECTOR(seg), &sel);
	__vmread(GUEST_SEG_AR_BYTES(seg), &ar);
	__vmread(GUEST_SEG_LIMIT(seg), &limit);
	__vmread(GUEST_SEG_BASE(seg), &reg->base);
	reg->sel = (uint16_t)sel;
	reg->limit = (uint32_t)limit;
	reg->attr = (uint16_t)((!(ar & X86_SEG_AR_SEG_UNUSABLE) << 7) | (ar & 0x7f) | ((ar >> 4) & 0xf00));
	if (seg == x86_seg_ss && !reg->p)
		reg->db = 0;
	if (seg == x86_seg_cs)
		reg->p = 1;
	if (reg->p) {
		reg->s = 1;
		reg->g = !!(reg->limit >> 20);
	}
}

/* asm/x86_64/page.h is_canonical_address(): bits 63:47 all equal (48-bit addresses). */
static inline bool is_canonical_address(unsigned long x)
{
	return ((long)x >> 47) == ((long)x >> 63);
}

/* ---- the exception slot ----------------------------------------------------------------------- */

static inline void vmxaddr_xen_inject(unsigned int vector, int errcode, const char *file, int line)
{
	struct vcpu *v = current;

	v->exception.queued++;
	v->exception.vector = vector;
	v->exception.error_code = errcode;
	v->exception.file = file;
	v->exception.line = line;
}
/* asm/hvm/hvm.h hvm_inject_hw_exception() / hvm_inject_page_fault(): record, do not inject. */
#define hvm_inject_hw_exception(vector, errcode) vmxaddr_xen_inject((vector), (errcode), __FILE__, __LINE__)
#define hvm_inject_page_fault(errcode, cr2) \
	((void)(cr2), vmxaddr_xen_inject(TRAP_page_fault, (errcode), __FILE__, __LINE__))

/* ---- guest memory ------------------------------------------------------------------------------ */

/* asm/hvm/support.h */
enum hvm_translation_result {
	HVMTRANS_okay, HVMTRANS_bad_linear_to_gfn, HVMTRANS_bad_gfn_to_mfn, HVMTRANS_unhandleable,
	HVMTRANS_gfn_paged_out, HVMTRANS_gfn_shared, HVMTRANS_need_retry,
};
typedef struct pagefault_info {
	unsigned long linear;
	int ec;
} pagefault_info_t;

/* hvm.c hvm_copy_from_guest_linear(): every linear address reads as zeroes (no paging is
 * modelled). Every caller of decode_vmx_inst() passes an unsigned long as the buffer: at most
 * that many bytes are written, whatever `size` says (see the top of this file). */
static inline enum hvm_translation_result hvm_copy_from_guest_linear(void *buf, unsigned long addr, unsigned int size,
                                                                     uint32_t pfec, pagefault_info_t *pfinfo)
{
	unsigned int n = size < sizeof(unsigned long) ? size : (unsigned)sizeof(unsigned long);

	(void)pfec;
	current->fetch_address = addr;
	current->fetch_asked = size;
	current->fetch_copied = n;
	memset(buf, 0, n);
	pfinfo->linear = addr;
	pfinfo->ec = 0;
	return HVMTRANS_okay;
}

#endif /* VMXADDR_XEN_SHIM_H */
