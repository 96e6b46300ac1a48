/* vmxaddr live: the L1 guest's loop over a chunk of cases (one KVM_RUN runs many cases).
 *
 * Copied by client.c to GPA L1_BLOB and run at linear SYS + L1_BLOB; absolute addresses come
 * from l1.h, so nothing here needs relocating.  For every case i in [CTL.next, CTL.count):
 * write the case's six descriptors into GDT slots 0x40..0x68 and its code into the slot, load
 * ES, FS, GS (then their 64-bit bases with WRMSR: a descriptor holds 32 bits), SS, DS and the
 * general registers, and jump far to the case's CS:RIP.  The instruction exits to KVM; what
 * comes back is either the instruction completed (the code then jumps back to resume32/64,
 * which saves RFLAGS with LAHF before anything changes them), or an exception KVM injected
 * (its handler stub passes vector and error code to exc32/64).  Either way the result goes to
 * RESULTS + 16*i and the loop goes on; HLT when the chunk is done.  64-bit handlers use IST 1,
 * so a fault never pushes on the case's own stack; in legacy mode it does (no stack switch at
 * CPL 0), and when that push fails the processor raises #DF, whose IDT entry is a task gate: the
 * #DF task (its own TSS and stack) records the case as "delivery failed" and returns to the loop
 * task at the next case.  Should L1 still shut down, the client records the case and restarts
 * the loop at the next one.
 */
#include "l1.h"

#define HERE(l) (LIN(L1_BLOB) + ((l) - l1_blob))
#define MSR_FS_BASE 0xc0000100
#define MSR_GS_BASE 0xc0000101

/* The index of the current case is kept three times, on three pages: a case's stray write (KVM
   completing a VMREAD/VMPTRST at a random address, or a fault's push on the case's stack) can
   change one copy, and the two others outvote it.  LOAD_NEXT: %ebx (clobbers %eax, %edx). */
.macro LOAD_NEXT
    mov LIN(NEXT0), %ebx
    mov LIN(NEXT1), %eax
    mov LIN(NEXT2), %edx
    cmp %eax, %ebx
    je 9f
    cmp %edx, %ebx
    je 9f
    mov %eax, %ebx
9:
.endm
.macro STORE_NEXT
    mov %ebx, LIN(NEXT0)
    mov %ebx, LIN(NEXT1)
    mov %ebx, LIN(NEXT2)
.endm

    .section .rodata.l1, "a"
    .globl l1_blob, l1_blob_end, l1_resume32, l1_resume64, l1_loop32, l1_loop64, l1_done32, l1_done64
l1_blob:

/* -- exception handlers, 16 bytes per vector ------------------------------------------------- */
/* vectors with an error code: SDM Vol. 3A §6.15 (8, 10-14, 17, 21; 29 and 30 as KVM lists them) */
#define HAS_EC(v) ((v) == 8 || ((v) >= 10 && (v) <= 14) || (v) == 17 || (v) == 21 || (v) == 29 || (v) == 30)

    .code32
    .set v, 0
    .rept 256
    .org l1_blob + 16 * v
    .if HAS_EC(v)
    pop %eax
    .else
    xor %eax, %eax
    .endif
    mov $v, %cl
    .byte 0xe9                     /* jmp rel32 (fixed size: every stub is 16 bytes) */
    .long exc32 - (. + 4)
    .set v, v + 1
    .endr

    .code64
    .set v, 0
    .rept 256
    .org l1_blob + 0x1000 + 16 * v
    .if HAS_EC(v)
    pop %rax
    .else
    xor %eax, %eax
    .endif
    mov $v, %cl
    .byte 0xe9
    .long exc64 - (. + 4)
    .set v, v + 1
    .endr

    .org l1_blob + 0x2000

/* -- legacy protected mode (16- and 32-bit cases), CS = SEL_CODE32 ---------------------------- */
    .code32
exc32:                              /* %cl vector, %eax error code; SS:ESP and DS are the case's */
    mov $SEL_DATA, %edx
    mov %edx, %ds
    mov %edx, %es
    mov %edx, %ss
    mov $LIN(LOOP_STACK), %esp
    mov %eax, %esi
    LOAD_NEXT
    mov %ebx, %edi
    shl $4, %edi
    add $LIN(RESULTS), %edi
    movb $K_EXC, R_KIND(%edi)
    movb %cl, R_VECTOR(%edi)
    movb $0, R_RELOADED(%edi)
    mov %esi, R_ERROR(%edi)
    jmp next32

l1_resume32:                        /* the instruction completed; segments are still the case's */
    lahf                            /* CF (VMfailInvalid) and ZF (VMfailValid) into AH first */
    mov %eax, %ebp
    mov $SEL_DATA, %edx
    mov %edx, %ds
    mov %edx, %es
    mov %edx, %ss
    mov $LIN(LOOP_STACK), %esp
    LOAD_NEXT
    mov %ebp, %eax
    mov %ebx, %edi
    shl $4, %edi
    add $LIN(RESULTS), %edi
    movb $K_HLT, R_KIND(%edi)
    movb %ah, R_RFLAGS(%edi)
    movb $0, R_RELOADED(%edi)
    /* a VMCLEAR or VMPTRLD that completed without VMfail may have changed L1's current VMCS:
       load ours again, or the next VMREAD/VMWRITE would VMfail before KVM decodes its operand */
    mov %ebx, %esi
    shl $8, %esi
    testb $1, LIN(CASES) + C_FLAGS(%esi)
    jz next32
    test $0x41, %ah
    jnz next32
    vmptrld LIN(VMCS_PTR)
    movb $1, R_RELOADED(%edi)
next32:
    lea TAG(%ebx), %eax
    mov %eax, R_TAG(%edi)
    inc %ebx
    STORE_NEXT

l1_loop32:                          /* entry: flat segments (KVM_SET_SREGS) */
    mov $LIN(LOOP_STACK), %esp
    LOAD_NEXT
    cmp LIN(COUNT), %ebx
    jae l1_done32
    mov %ebx, %esi
    shl $8, %esi
    add $LIN(CASES), %esi
    cld
    testb $8, C_FLAGS(%esi)       /* the same code as the case before: leave the slot */
    jnz 1f
    lea C_CODE(%esi), %esi
    mov $LIN(SLOT_ALIAS), %edi
    mov $8, %ecx
    rep movsl                       /* the code, into the slot through its writable alias */
    lea -C_CODE - 32(%esi), %esi
1:
    mov $LIN(GDT) + SEL_CASE, %edi
    mov $12, %ecx
    rep movsl                       /* the six descriptors */
    lea -48(%esi), %esi
    mov C_FAR(%esi), %eax
    mov %eax, LIN(FARPTR)
    mov C_FAR + 4(%esi), %eax
    mov %eax, LIN(FARPTR) + 4
    movzwl C_SEL + 0(%esi), %eax
    mov %eax, %es
    movzwl C_SEL + 8(%esi), %eax
    mov %eax, %fs
    movzwl C_SEL + 10(%esi), %eax
    mov %eax, %gs
    testb $2, C_FLAGS(%esi)       /* a base the descriptor could not hold (WRMSR may exit) */
    jz 1f
    mov $MSR_FS_BASE, %ecx
    mov C_FSBASE(%esi), %eax
    mov C_FSBASE + 4(%esi), %edx
    wrmsr
1:  testb $4, C_FLAGS(%esi)
    jz 1f
    mov $MSR_GS_BASE, %ecx
    mov C_GSBASE(%esi), %eax
    mov C_GSBASE + 4(%esi), %edx
    wrmsr
1:  pushl $2                        /* RFLAGS = 2 for the case: nothing below changes a flag */
    popfl
    movzwl C_SEL + 4(%esi), %eax
    mov %eax, %ss
    movzwl C_SEL + 6(%esi), %eax
    mov %eax, %ds
    /* the case's DS may be anything now: read the rest through CS (flat, readable) */
    mov %cs:C_REGS + 0(%esi), %eax
    mov %cs:C_REGS + 8(%esi), %ecx
    mov %cs:C_REGS + 16(%esi), %edx
    mov %cs:C_REGS + 24(%esi), %ebx
    mov %cs:C_REGS + 32(%esi), %esp
    mov %cs:C_REGS + 40(%esi), %ebp
    mov %cs:C_REGS + 56(%esi), %edi
    mov %cs:C_REGS + 48(%esi), %esi
    ljmp *%cs:LIN(FARPTR)
l1_done32:
    hlt
    jmp l1_done32

    .globl l1_df32
l1_df32:                            /* the #DF task (SDM Vol. 3A §7.3): flat segments from TSS_DF */
    LOAD_NEXT
    mov %ebx, %edi
    shl $4, %edi
    add $LIN(RESULTS), %edi
    movb $K_DF, R_KIND(%edi)
    movb $8, R_VECTOR(%edi)
    movb $0, R_RELOADED(%edi)
    lea TAG(%ebx), %eax
    mov %eax, R_TAG(%edi)
    inc %ebx
    STORE_NEXT
    /* IRET (EFLAGS.NT is set) switches back to the loop task: make it resume at the next case */
    movl $HERE(l1_loop32), LIN(TSS_LOOP) + 0x20
    movl $2, LIN(TSS_LOOP) + 0x24
    movl $LIN(LOOP_STACK), LIN(TSS_LOOP) + 0x38
    movl $SEL_DATA, LIN(TSS_LOOP) + 0x48
    movl $SEL_CODE32, LIN(TSS_LOOP) + 0x4c
    movl $SEL_DATA, LIN(TSS_LOOP) + 0x50
    movl $SEL_DATA, LIN(TSS_LOOP) + 0x54
    movl $SEL_DATA, LIN(TSS_LOOP) + 0x58
    movl $SEL_DATA, LIN(TSS_LOOP) + 0x5c
    mov $LIN(DF_STACK), %esp        /* the next #DF starts here again, after the IRET */
    iret
    jmp l1_df32

/* -- 64-bit mode, CS = SEL_CODE64 ------------------------------------------------------------- */
    .code64
exc64:                              /* %cl vector, %eax error code; on the IST 1 stack */
    mov $SEL_DATA, %edx
    mov %edx, %ds
    mov %edx, %es
    mov %edx, %ss
    mov $LIN(LOOP_STACK), %esp
    mov %eax, %esi
    LOAD_NEXT
    mov %ebx, %edi
    shl $4, %edi
    add $LIN(RESULTS), %edi
    movb $K_EXC, R_KIND(%rdi)
    movb %cl, R_VECTOR(%rdi)
    movb $0, R_RELOADED(%rdi)
    mov %esi, R_ERROR(%rdi)
    jmp next64

l1_resume64:
    lahf
    mov %eax, %ebp
    mov $SEL_DATA, %edx
    mov %edx, %ds
    mov %edx, %es
    mov %edx, %ss
    mov $LIN(LOOP_STACK), %esp
    LOAD_NEXT
    mov %ebp, %eax
    mov %ebx, %edi
    shl $4, %edi
    add $LIN(RESULTS), %edi
    movb $K_HLT, R_KIND(%rdi)
    movb %ah, R_RFLAGS(%rdi)
    movb $0, R_RELOADED(%rdi)
    mov %ebx, %esi
    shl $8, %esi
    testb $1, LIN(CASES) + C_FLAGS(%rsi)
    jz next64
    test $0x41, %ah
    jnz next64
    vmptrld LIN(VMCS_PTR)
    movb $1, R_RELOADED(%rdi)
next64:
    lea TAG(%rbx), %eax
    mov %eax, R_TAG(%rdi)
    inc %ebx
    STORE_NEXT

l1_loop64:
    mov $LIN(LOOP_STACK), %esp
    LOAD_NEXT
    cmp LIN(COUNT), %ebx
    jae l1_done64
    mov %ebx, %esi
    shl $8, %esi
    add $LIN(CASES), %esi
    cld
    testb $8, C_FLAGS(%rsi)       /* the same code as the case before: leave the slot */
    jnz 1f
    lea C_CODE(%rsi), %rsi
    mov $LIN(SLOT_ALIAS), %edi
    mov $8, %ecx
    rep movsl                       /* the code, into the slot through its writable alias */
    lea -C_CODE - 32(%rsi), %rsi
1:
    mov $LIN(GDT) + SEL_CASE, %edi
    mov $12, %ecx
    rep movsl
    lea -48(%rsi), %rsi
    mov C_FAR(%rsi), %rax
    mov %rax, LIN(FARPTR)
    mov C_FAR + 8(%rsi), %eax
    mov %eax, LIN(FARPTR) + 8
    movzwl C_SEL + 0(%rsi), %eax
    mov %eax, %es
    movzwl C_SEL + 8(%rsi), %eax
    mov %eax, %fs
    movzwl C_SEL + 10(%rsi), %eax
    mov %eax, %gs
    testb $2, C_FLAGS(%rsi)       /* a base the descriptor could not hold (WRMSR may exit) */
    jz 1f
    mov $MSR_FS_BASE, %ecx
    mov C_FSBASE(%rsi), %eax
    mov C_FSBASE + 4(%rsi), %edx
    wrmsr
1:  testb $4, C_FLAGS(%rsi)
    jz 1f
    mov $MSR_GS_BASE, %ecx
    mov C_GSBASE(%rsi), %eax
    mov C_GSBASE + 4(%rsi), %edx
    wrmsr
1:  pushq $2
    popfq
    movzwl C_SEL + 4(%rsi), %eax
    mov %eax, %ss                   /* null (unusable SS) is allowed at CPL 0 in 64-bit mode */
    movzwl C_SEL + 6(%rsi), %eax
    mov %eax, %ds                   /* 64-bit mode ignores DS: the reads below still work */
    mov C_REGS + 0(%rsi), %rax
    mov C_REGS + 8(%rsi), %rcx
    mov C_REGS + 16(%rsi), %rdx
    mov C_REGS + 24(%rsi), %rbx
    mov C_REGS + 32(%rsi), %rsp
    mov C_REGS + 40(%rsi), %rbp
    mov C_REGS + 56(%rsi), %rdi
    mov C_REGS + 64(%rsi), %r8
    mov C_REGS + 72(%rsi), %r9
    mov C_REGS + 80(%rsi), %r10
    mov C_REGS + 88(%rsi), %r11
    mov C_REGS + 96(%rsi), %r12
    mov C_REGS + 104(%rsi), %r13
    mov C_REGS + 112(%rsi), %r14
    mov C_REGS + 120(%rsi), %r15
    mov C_REGS + 48(%rsi), %rsi
    .byte 0x48, 0xff, 0x2c, 0x25    /* jmp far m16:64 (REX.W FF /5): to the case's CS:RIP */
    .long LIN(FARPTR)
l1_done64:
    hlt
    jmp l1_done64
l1_blob_end:
    .section .note.GNU-stack, "", @progbits
