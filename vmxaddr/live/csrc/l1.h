/* vmxaddr live: the L1 guest's memory layout, shared by client.c and l1.S.
 *
 * Guest-physical addresses (GPA).  L1's page tables map the 2-MByte system region [0, 2M) at
 * linear SYS with 4-KByte pages, read-only except the stack pages [0x80000, 0xA0000); every other
 * linear address maps to the 2-MByte sink at SINK.  Everything L1 writes itself (results, its
 * GDT, its control block, the instruction slot through an alias) lies in the pages that were
 * already writable, so the permissions every case sees are those of the one-case-per-KVM_RUN
 * harness.
 */
#ifndef VMXADDR_L1_H
#define VMXADDR_L1_H

#define SYS 0x40000000            /* linear address of the system region (GPA 0) */
#define LIN(x) (SYS + (x))

#define OLD_GDT 0x7000            /* the static GDT (what the single-case path used) */
#define IDT64 0x8000
#define IDT32 0x9000
#define TSS64 0xA000
#define TSS32 0xB000
#define VMXON_PTR 0x12000         /* holds 0x10000 (VMXON region) */
#define VMCS_PTR 0x12008          /* holds 0x11000 (L1's VMCS) */
#define INIT 0x21000              /* VMXON, VMCLEAR, VMPTRLD, HLT */
#define REINIT 0x21100            /* VMPTRLD, HLT */
#define L1_BLOB 0x22000           /* l1.S: handlers32 +0, handlers64 +0x1000, loop code +0x2000 */
#define H32 (L1_BLOB)
#define H64 (L1_BLOB + 0x1000)
#define SLOT 0x30000              /* the case's instruction */
#define TRAMP64 (SLOT - 48)       /* back to the loop from 64-bit code: jmp [rip+0] */
#define TRAMP16 (SLOT - 32)       /* from 16-bit code: jmp far 0x70:resume32 (o32) */
#define TRAMP32 (SLOT - 16)       /* from 32-bit code: jmp far 0x70:resume32 */

#define RESULTS 0x80000           /* 16 bytes per case of a chunk */
#define CHUNK 2560                /* cases per KVM_RUN: RESULTS .. GDT */
#define GDT 0x8A000               /* L1's GDT (writable: the case's descriptors go here) */
#define GDT_LIMIT 0x97
#define CTL 0x8B000               /* u32 next case (copy 0), far pointer at +16 */
#define NEXT0 CTL                 /* the next case's index, three copies on three pages (l1.S) */
#define NEXT1 0x8D000
#define NEXT2 0x8E800
#define COUNT 0x13000             /* u32 cases in the chunk: a read-only page, no stray write reaches it */
#define FARPTR (CTL + 16)
#define TSS_LOOP 0x8B100          /* legacy mode's TSS (a task switch writes it: writable page) */
#define TSS_DF 0x8B200            /* the #DF task's TSS (legacy mode) */
#define DF_STACK 0x8F800          /* its stack */
#define SLOT_ALIAS 0x8C000        /* linear SYS+0x8C000 -> GPA SLOT, writable */
#define LOOP_STACK 0x8E000        /* top of L1's own stack */
#define RSP0 0x8F000
#define IST1 0x90000
#define CASES 0x100000            /* CHUNK case records of 256 bytes, read-only to L1 */

#define SEL_CASE 0x40             /* es cs ss ds fs gs: 0x40, 0x48, ... 0x68 */
#define SEL_CODE32 0x70
#define SEL_CODE64 0x78
#define SEL_DATA 0x80
#define SEL_TSS_LOOP 0x88
#define SEL_TSS_DF 0x90

/* case record (256 bytes at CASES + 256 * i) */
#define C_DESC 0                  /* u64 x 6: the case's descriptors, es cs ss ds fs gs */
#define C_SEL 48                  /* u16 x 6: the selectors to load (0: unusable) */
#define C_FLAGS 60                /* bit 0: VMCLEAR/VMPTRLD, reload L1's VMCS if it completed;
                                     bits 1, 2: write the FS, GS base with WRMSR */
#define C_FSBASE 64
#define C_GSBASE 72
#define C_REGS 80                 /* u64 x 16, encoding order: rax rcx rdx rbx rsp rbp rsi rdi r8.. */
#define C_FAR 208                 /* m16:32 (legacy) or m16:64 (64-bit) to the case's instruction */
#define C_CODE 224                /* 32 bytes: the instruction, then the way back */

/* result record (16 bytes at RESULTS + 16 * i) */
#define R_TAG 0                   /* TAG + i once written */
#define R_KIND 4                  /* K_HLT: completed (rflags valid), K_EXC: exception */
#define R_VECTOR 5
#define R_RELOADED 6              /* 1: L1 executed VMPTRLD [VMCS_PTR] after the case */
#define R_RFLAGS 7                /* RFLAGS bits 7:0 after the instruction (LAHF) */
#define R_ERROR 8
#define TAG 0x4c310000
#define K_HLT 1
#define K_EXC 2
#define K_DF 6                    /* legacy mode: the fault's delivery failed, #DF through the task gate */

#endif
