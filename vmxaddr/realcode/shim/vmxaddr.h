/*
 * vmxaddr.h — the C interface between vmxaddr and a hypervisor's address computation.
 *
 * Write one function (an "adapter") against this header:
 *
 *     int my_adapter(const struct vmxaddr_exit *exit, const struct vmxaddr_state *state,
 *                    const struct vmxaddr_access *access, struct vmxaddr_result *out);
 *
 * and vmxaddr runs it as a model: `vmxaddr fuzz --model c:my_adapter.c:my_adapter --against sdm`.
 * The adapter gets what the hypervisor sees on a VM exit caused by a VMX-family instruction
 * (the exit information of SDM Vol. 3C §28.2, the guest state of §25.4) and answers with what
 * the hypervisor would do: the address it computed, or the exception it would inject.
 *
 * vmxaddr fills every input field on every call and zeroes *out before the call. The return
 * value is ignored (return 0). Everything is plain data: no pointers, no allocation. One call
 * must not depend on an earlier one. Calls may come from several threads, each with its own
 * structures.
 *
 * Write VMXADDR_EXPORT_LAYOUT; once, at file scope: vmxaddr checks the sizes and offsets it
 * exports against its own before the first call. (For c:FILE.c:FUNCTION vmxaddr adds it if
 * you did not.)
 *
 * This header is part of vmxaddr (MIT licence); copy it into your tree freely.
 */
#ifndef VMXADDR_H
#define VMXADDR_H

#include <stddef.h>
#include <stdint.h>

#define VMXADDR_ABI_VERSION 1

/* ---- exit information (SDM Vol. 3C §28.2.1, §28.2.5) --------------------------------------- */

struct vmxaddr_exit {
	uint32_t exit_reason;        /* basic exit reason: 21 VMPTRLD, 22 VMPTRST, 23 VMREAD, 25 VMWRITE,
	                                27 VMXON, 19 VMCLEAR, 50 INVEPT, 53 INVVPID, 58 INVPCID, 46/47
	                                descriptor-table access (bits 29:28 of the info field say which) */
	uint32_t instruction_info;   /* VM-exit instruction-information field (VMCS 0x440E) */
	uint64_t exit_qualification; /* the displacement (VMCS 0x6400); bits beyond the address size are
	                                undefined in the SDM: vmxaddr's policy decides them */
	uint32_t instruction_length; /* VM-exit instruction length (VMCS 0x440C) */
	uint32_t reserved0;
};

/* ---- guest state (SDM Vol. 3C §25.4, as the VMCS holds it) ----------------------------------- */

/* Segment registers in the instruction-information numbering (bits 17:15). */
enum { VMXADDR_ES = 0, VMXADDR_CS = 1, VMXADDR_SS = 2, VMXADDR_DS = 3, VMXADDR_FS = 4, VMXADDR_GS = 5 };

struct vmxaddr_segment {
	uint64_t base;     /* guest segment base */
	uint32_t limit;    /* byte-granular limit, as the VMCS holds it (G already applied) */
	uint16_t selector;
	uint8_t type;      /* access rights bits 3:0 (data: bit 1 writable, bit 2 expand-down;
	                      code: bit 3 set, bit 1 readable) */
	uint8_t s;         /* 1 = code or data segment */
	uint8_t dpl;
	uint8_t p;
	uint8_t db;        /* D/B */
	uint8_t g;
	uint8_t l;         /* CS.L: 64-bit code segment */
	uint8_t unusable;  /* access rights bit 16: "segment unusable" */
	uint8_t reserved0[10];
};

/* The processor mode, also derivable from cr0/efer/rflags/CS.L below (kept for convenience). */
enum {
	VMXADDR_MODE_REAL = 0,          /* CR0.PE = 0 */
	VMXADDR_MODE_VIRTUAL_8086 = 1,  /* CR0.PE = 1, RFLAGS.VM = 1 */
	VMXADDR_MODE_PROTECTED = 2,     /* CR0.PE = 1, EFER.LMA = 0 */
	VMXADDR_MODE_COMPATIBILITY = 3, /* EFER.LMA = 1, CS.L = 0 */
	VMXADDR_MODE_64BIT = 4          /* EFER.LMA = 1, CS.L = 1 */
};

#define VMXADDR_CR0_PE (1ull << 0)
#define VMXADDR_CR0_PG (1ull << 31)
#define VMXADDR_CR3_LAM_U57 (1ull << 61)
#define VMXADDR_CR3_LAM_U48 (1ull << 62)
#define VMXADDR_CR4_PAE (1ull << 5)
#define VMXADDR_CR4_LA57 (1ull << 12)
#define VMXADDR_CR4_LAM_SUP (1ull << 28)
#define VMXADDR_EFER_LME (1ull << 8)
#define VMXADDR_EFER_LMA (1ull << 10)
#define VMXADDR_RFLAGS_VM (1ull << 17)

/* Register numbers as in the instruction-information field: 0 RAX, 1 RCX, 2 RDX, 3 RBX,
 * 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8-15 R8-R15. */
struct vmxaddr_state {
	uint64_t gpr[16];
	uint64_t rip;
	uint64_t rflags;   /* only VM (bit 17) is meaningful: set in virtual-8086 mode */
	uint64_t cr0;      /* PE, and PG in long mode */
	uint64_t cr3;      /* only LAM_U48 (bit 62) and LAM_U57 (bit 61) are meaningful */
	uint64_t cr4;      /* LA57 (bit 12), LAM_SUP (bit 28), PAE in long mode */
	uint64_t efer;     /* LME and LMA in long mode */
	uint32_t mode;     /* VMXADDR_MODE_* */
	uint32_t cpl;      /* current privilege level (SS.DPL) */
	struct vmxaddr_segment seg[6]; /* indexed by VMXADDR_ES … VMXADDR_GS */
};

/* ---- the access the hypervisor is about to emulate -------------------------------------------- */

struct vmxaddr_access {
	uint32_t size;   /* bytes (8 for VMPTRLD, 16 for INVEPT's descriptor, 4 or 8 for VMREAD/VMWRITE) */
	uint32_t write;  /* 1: the instruction writes the operand (VMPTRST, VMREAD), 0: reads it */
};

/* ---- the answer ------------------------------------------------------------------------------ */

enum {
	VMXADDR_OK = 0,          /* the hypervisor would access linear_address */
	VMXADDR_FAULT = 1,       /* the hypervisor would inject exception `vector` */
	VMXADDR_NO_MEMORY = 2    /* a register operand: no memory access, no fault */
};

/* Exception vectors (SDM Vol. 3A §6.3.1). */
#define VMXADDR_VECTOR_UD 6
#define VMXADDR_VECTOR_SS 12
#define VMXADDR_VECTOR_GP 13

/* Bits of vmxaddr_result.valid: which optional values the adapter reports. */
#define VMXADDR_HAVE_EFFECTIVE_ADDRESS (1u << 0)
#define VMXADDR_HAVE_LINEAR_ADDRESS (1u << 1)
#define VMXADDR_HAVE_SEGMENT (1u << 2)
#define VMXADDR_HAVE_SEGMENT_BASE (1u << 3)
#define VMXADDR_HAVE_DISPLACEMENT (1u << 4)
#define VMXADDR_HAVE_ERROR_CODE (1u << 5)

struct vmxaddr_result {
	uint32_t status;            /* VMXADDR_OK, VMXADDR_FAULT or VMXADDR_NO_MEMORY */
	uint32_t vector;            /* with VMXADDR_FAULT: VMXADDR_VECTOR_UD (6), _SS (12), _GP (13), ... */
	uint32_t error_code;        /* with VMXADDR_HAVE_ERROR_CODE */
	uint32_t valid;             /* VMXADDR_HAVE_* bits */
	uint64_t effective_address; /* the offset within the segment, as the hypervisor computed it */
	uint64_t linear_address;    /* segment base + offset, as the hypervisor computed it */
	uint64_t segment_base;      /* the base it added (0 where it added none) */
	uint64_t displacement;      /* the displacement it used, modulo 2^64 */
	uint32_t segment;           /* VMXADDR_ES … VMXADDR_GS */
	uint32_t reserved0;
};

/* Optional: an adapter that handles only some instructions exports their names, comma-separated
 * (vmxaddr's mnemonics: vmptrld, vmptrst, vmclear, vmxon, vmread, vmwrite, invept, invvpid, invpcid,
 * lgdt, …), and vmxaddr fuzzes only those:
 *     const char vmxaddr_mnemonics[] = "vmptrld,vmptrst,vmclear,vmxon,vmread,vmwrite,invept,invvpid";
 */

typedef int (*vmxaddr_adapter)(const struct vmxaddr_exit *exit, const struct vmxaddr_state *state,
                               const struct vmxaddr_access *access, struct vmxaddr_result *out);

/* Sizes and offsets, for vmxaddr to check its view of these structures at load time. */
#define VMXADDR_LAYOUT_ENTRIES 12
/* (weak: vmxaddr adds its own copy when it compiles c:FILE.c, and the two are the same) */
#define VMXADDR_EXPORT_LAYOUT                                                                     \
	__attribute__((weak)) const uint32_t vmxaddr_layout[VMXADDR_LAYOUT_ENTRIES] = {                                     \
		VMXADDR_ABI_VERSION,                                                                      \
		sizeof(struct vmxaddr_exit), sizeof(struct vmxaddr_segment),                             \
		sizeof(struct vmxaddr_state), sizeof(struct vmxaddr_access),                             \
		sizeof(struct vmxaddr_result), offsetof(struct vmxaddr_state, seg),                      \
		offsetof(struct vmxaddr_state, mode), offsetof(struct vmxaddr_segment, type),            \
		offsetof(struct vmxaddr_segment, unusable), offsetof(struct vmxaddr_result, linear_address), \
		offsetof(struct vmxaddr_result, segment)}

#endif /* VMXADDR_H */
