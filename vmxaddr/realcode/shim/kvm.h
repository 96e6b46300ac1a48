/*
 * kvm.h — what KVM's get_vmx_mem_address() sees, in C: the world a copy of that function,
 * extracted from a Linux tree, is compiled in (vmxaddr.realcode.build).
 *
 * This file is the specification of "the hypervisor sees" for KVM: a fake vCPU holding the
 * guest state vmxaddr models (struct vmxaddr_state, vmxaddr.h), the types the function names,
 * and each helper it calls, re-implemented in a few lines over that state. Written for vmxaddr
 * (MIT); no kernel text. Each helper says which kernel definition it stands for; they were
 * checked against Linux 6.1 and 6.12 (Debian's linux-source-6.1 / linux-source-6.12):
 * re-read those definitions when a new release is added, since a wrong helper changes answers
 * silently.
 *
 * The exception slot: kvm_queue_exception() and kvm_queue_exception_e() record the vector,
 * the error code and the source line (of the extracted file, via #line) of the call instead of
 * queueing anything.
 */
#ifndef VMXADDR_KVM_SHIM_H
#define VMXADDR_KVM_SHIM_H

#include <stdbool.h>
#include <stdint.h>

#include "vmxaddr.h"

/* ---- kernel types (include/linux/types.h, asm-generic/int-ll64.h; x86-64: long is 64 bits) ---- */
typedef uint8_t u8, __u8;
typedef uint16_t u16, __u16;
typedef uint32_t u32, __u32;
typedef uint64_t u64, __u64;
typedef int64_t s64, __s64;
typedef unsigned long gva_t;
typedef u64 gpa_t;

#define BIT(n) (1ul << (n))
#define BIT_ULL(n) (1ull << (n))
#define unlikely(x) __builtin_expect(!!(x), 0)
#define likely(x) __builtin_expect(!!(x), 1)

/* arch/x86/include/uapi/asm/kvm.h: struct kvm_segment, the segment as KVM hands it around. */
struct kvm_segment {
	__u64 base;
	__u32 limit;
	__u16 selector;
	__u8 type;
	__u8 present, dpl, db, s, l, g, avl;
	__u8 unusable;
	__u8 padding;
};

/* arch/x86/include/asm/kvm_host.h: segment numbers (the instruction-information numbering). */
enum { VCPU_SREG_ES, VCPU_SREG_CS, VCPU_SREG_SS, VCPU_SREG_DS, VCPU_SREG_FS, VCPU_SREG_GS,
       VCPU_SREG_TR, VCPU_SREG_LDTR };

/* arch/x86/include/uapi/asm/kvm.h: exception vectors. */
#define UD_VECTOR 6
#define SS_VECTOR 12
#define GP_VECTOR 13

/* arch/x86/include/uapi/asm/processor-flags.h */
#define X86_CR3_LAM_U57 VMXADDR_CR3_LAM_U57
#define X86_CR3_LAM_U48 VMXADDR_CR3_LAM_U48
#define X86_CR4_LA57 VMXADDR_CR4_LA57
#define X86_CR4_LAM_SUP VMXADDR_CR4_LAM_SUP
#define EFER_LMA VMXADDR_EFER_LMA

/* arch/x86/include/asm/kvm_emulate.h (6.8 and later): flags of an emulated access. */
#define X86EMUL_F_WRITE BIT(0)
#define X86EMUL_F_FETCH BIT(1)
#define X86EMUL_F_IMPLICIT BIT(2)
#define X86EMUL_F_INVLPG BIT(3)
#define X86EMUL_F_MSR BIT(4)
#define X86EMUL_F_DT_LOAD BIT(5)

/* ---- the fake vCPU --------------------------------------------------------------------------- */

struct vmxaddr_exception_slot {
	int queued;        /* how many times an exception was queued (the real code queues at most one) */
	u32 vector;
	int has_error_code;
	u32 error_code;
	int line;          /* source line of the queueing call in the extracted file */
};

struct kvm_vcpu {
	const struct vmxaddr_state *state;  /* the VMCS guest-state area, as vmxaddr models it */
	struct vmxaddr_exception_slot exception;
	int segment_read;                   /* the segment vmx_get_segment() was asked for, or -1 */
	int registers_read;                 /* bit n: kvm_register_read(vcpu, n) was called */
};

/* ---- helpers, each over the fake vCPU -------------------------------------------------------- */

/* include/linux/bitops.h sign_extend64(): sign-extend from bit `index` (0-based). */
static inline s64 sign_extend64(u64 value, int index)
{
	unsigned shift = 63 - index;
	return (s64)(value << shift) >> shift;
}

/* arch/x86/kvm/x86.h is_long_mode(): EFER.LMA (CONFIG_X86_64). */
static inline bool is_long_mode(struct kvm_vcpu *vcpu)
{
	return (vcpu->state->efer & EFER_LMA) != 0;
}

/* arch/x86/kvm/x86.h is_64_bit_mode(): long mode and CS.L (vmx_get_cs_db_l_bits() reads the
 * CS access rights from the VMCS). */
static inline bool is_64_bit_mode(struct kvm_vcpu *vcpu)
{
	if (!is_long_mode(vcpu))
		return false;
	return vcpu->state->seg[VCPU_SREG_CS].l != 0;
}

/* arch/x86/kvm/x86.h kvm_register_read() (since 82277eeed65e, 5.13): the register, truncated to
 * 32 bits unless in 64-bit mode. */
static inline unsigned long kvm_register_read(struct kvm_vcpu *vcpu, int reg)
{
	unsigned long val = vcpu->state->gpr[reg & 15];

	vcpu->registers_read |= 1 << (reg & 15);
	return is_64_bit_mode(vcpu) ? val : (u32)val;
}

/* arch/x86/kvm/kvm_cache_regs.h kvm_read_cr4_bits() (6.1) and kvm_is_cr4_bit_set() (6.12). */
static inline unsigned long kvm_read_cr4_bits(struct kvm_vcpu *vcpu, unsigned long mask)
{
	return vcpu->state->cr4 & mask;
}

static inline bool kvm_is_cr4_bit_set(struct kvm_vcpu *vcpu, unsigned long cr4_bit)
{
	return (vcpu->state->cr4 & cr4_bit) != 0;
}

/* arch/x86/kvm/x86.h kvm_get_active_cr3_lam_bits() (6.8+): CR3's LAM bits, if the guest may use
 * LAM. vmxaddr's states carry no CPUID: a guest with a LAM bit set is taken to have LAM. */
static inline unsigned long kvm_get_active_cr3_lam_bits(struct kvm_vcpu *vcpu)
{
	return vcpu->state->cr3 & (X86_CR3_LAM_U48 | X86_CR3_LAM_U57);
}

/* arch/x86/include/asm/page.h __canonical_address() / __is_canonical_address(). */
static inline u64 vmxaddr_canonical(u64 la, u8 vaddr_bits)
{
	return ((s64)la << (64 - vaddr_bits)) >> (64 - vaddr_bits);
}

static inline bool __is_canonical_address(u64 la, u8 vaddr_bits)
{
	return vmxaddr_canonical(la, vaddr_bits) == la;
}

/* arch/x86/kvm/x86.h vcpu_virt_addr_bits(): 57 with CR4.LA57, else 48. */
static inline u8 vcpu_virt_addr_bits(struct kvm_vcpu *vcpu)
{
	return kvm_is_cr4_bit_set(vcpu, X86_CR4_LA57) ? 57 : 48;
}

/* arch/x86/kvm/x86.h is_noncanonical_address(la, vcpu) (6.1) and (la, vcpu, flags) (Debian's
 * 6.12: MSR, descriptor-table and INVLPG addresses are checked against the host's width, taken
 * here as a host with 5-level paging; every other access against the guest's CR4.LA57). Both
 * spellings reach vmxaddr_is_noncanonical(). */
static inline bool vmxaddr_is_noncanonical(u64 la, struct kvm_vcpu *vcpu, unsigned flags)
{
	if (flags & (X86EMUL_F_INVLPG | X86EMUL_F_MSR | X86EMUL_F_DT_LOAD))
		return !__is_canonical_address(la, 57);
	return !__is_canonical_address(la, vcpu_virt_addr_bits(vcpu));
}
#define VMXADDR_NONCANONICAL_(la, vcpu, flags, ...) vmxaddr_is_noncanonical((la), (vcpu), (flags))
#define is_noncanonical_address(...) VMXADDR_NONCANONICAL_(__VA_ARGS__, 0, 0)

/* arch/x86/kvm/vmx/vmx.c vmx_get_segment(): the segment from the VMCS guest-state area (as with
 * unrestricted guest; the vm86 real-mode emulation of old processors is not modelled). */
static inline void vmx_get_segment(struct kvm_vcpu *vcpu, struct kvm_segment *var, int seg)
{
	/* 6 and 7 would be TR and LDTR, which vmxaddr's state does not hold: reported, not read */
	static const struct vmxaddr_segment none;
	const struct vmxaddr_segment *s = seg >= 0 && seg < 6 ? &vcpu->state->seg[seg] : &none;

	vcpu->segment_read = seg;
	var->base = s->base;
	var->limit = s->limit;
	var->selector = s->selector;
	var->type = s->type;
	var->s = s->s;
	var->dpl = s->dpl;
	var->present = s->p;
	var->avl = 0;
	var->l = s->l;
	var->db = s->db;
	var->g = s->g;
	var->unusable = s->unusable;
	var->padding = 0;
}

/* arch/x86/kvm/x86.c kvm_queue_exception() / kvm_queue_exception_e(): record, do not queue. */
static inline void vmxaddr_queue(struct kvm_vcpu *vcpu, unsigned nr, int has_error_code, u32 error_code, int line)
{
	vcpu->exception.queued++;
	vcpu->exception.vector = nr;
	vcpu->exception.has_error_code = has_error_code;
	vcpu->exception.error_code = error_code;
	vcpu->exception.line = line;
}
#define kvm_queue_exception(vcpu, nr) vmxaddr_queue((vcpu), (nr), 0, 0, __LINE__)
#define kvm_queue_exception_e(vcpu, nr, code) vmxaddr_queue((vcpu), (nr), 1, (code), __LINE__)
#define kvm_inject_gp(vcpu, code) vmxaddr_queue((vcpu), GP_VECTOR, 1, (code), __LINE__)

/* Prototypes of the functions the tree defines (they come from vmx.h / nested.h in the kernel). */
gva_t vmx_get_untagged_addr(struct kvm_vcpu *vcpu, gva_t gva, unsigned int flags);
int get_vmx_mem_address(struct kvm_vcpu *vcpu, unsigned long exit_qualification,
                        u32 vmx_instruction_info, bool wr, int len, gva_t *ret);

#endif /* VMXADDR_KVM_SHIM_H */
