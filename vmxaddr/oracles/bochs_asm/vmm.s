/*
 * Minimal VMM used as the Bochs oracle (issue 8).  Assembled with GNU as and
 * linked by vmxaddr/oracles/bochs.py together with a generated cases.s that
 * defines the guest code blocks and the tables below:
 *   groups:       GROUP_SIZE-byte entries (see GRP_* offsets), group_count entries
 *   group_count:  .quad number of groups
 *   guest_fields_<code size>_<cpl>: (field, value) .quad pairs ending with field -1
 *
 * The image replaces the BIOS (bochs `romimage:`): the CPU starts at the reset
 * vector, we go 16-bit real -> 32-bit protected -> 64-bit long mode, VMXON,
 * then for every group: VMCLEAR/VMPTRLD, write the VMCS, VMLAUNCH.  Every exit
 * prints one line on port 0xE9 (bochs `port_e9_hack`):
 *   X <reason> <qualification> <instr-info> <guest-rip> <instr-len> <intr-info> <guest-linear>
 * (hex) and the guest resumes at the next case start.  The guest ends a group
 * with VMCALL.  After the last group we print END and ask bochs to quit via
 * its shutdown port 0x8900.
 */

/* physical memory map (RAM below the payload, which is copied to 0x400000) */
        .set PML4,        0x10000          /* host 4-level tables: 4 GiB identity, 2 MiB pages */
        .set PDPT,        0x11000
        .set PD0,         0x12000          /* 4 page directories, 0x12000..0x15fff */
        .set GPML4,       0x16000          /* guest 64-bit tables: payload only, read-only */
        .set GPDPT,       0x17000
        .set GPD,         0x18000
        .set GPD32,       0x19000          /* guest 32-bit (non-PAE, PSE) page directory */
        .set VMXON_REG,   0x1a000
        .set VMCS_REG,    0x1b000
        .set TSS,         0x1c000
        .set IDT,         0x1d000
        .set STACK_TOP,   0x30000
        .set PAYLOAD,     0x400000

/* group table entry layout (generated in cases.s) */
        .set GRP_CODE_SIZE, 0              /* 16, 32 or 64 */
        .set GRP_CS_BASE,   8
        .set GRP_TABLE,     16             /* address of case-start table (count+1 quads) */
        .set GRP_COUNT,     24
        .set GRP_FIELDS,    32             /* guest_fields_<size>_<cpl> of this group */
        .set GROUP_SIZE,    40

/* VMCS field encodings (SDM Vol. 3 App. B) */
        .set VM_INSTR_ERROR, 0x4400
        .set EXIT_REASON,    0x4402
        .set EXIT_INTR_INFO, 0x4404
        .set EXIT_INSTR_LEN, 0x440c
        .set EXIT_INSTR_INFO,0x440e
        .set EXIT_QUAL,      0x6400
        .set GUEST_LINEAR,   0x640a
        .set GUEST_RIP,      0x681e
        .set GUEST_CS_BASE,  0x6808
        .set PIN_CTLS,       0x4000
        .set PROC_CTLS,      0x4002
        .set PROC_CTLS2,     0x401e
        .set EXIT_CTLS,      0x400c
        .set ENTRY_CTLS,     0x4012
        .set HOST_CR0,       0x6c00
        .set HOST_CR3,       0x6c02
        .set HOST_CR4,       0x6c04
        .set HOST_GDTR_BASE, 0x6c0c
        .set HOST_RSP,       0x6c14
        .set HOST_RIP,       0x6c16

        .macro OUTC c
        mov $\c, %al
        out %al, $0xe9
        .endm

        .macro VMW field, src
        mov $\field, %edx
        mov \src, %rax
        vmwrite %rax, %rdx
        .endm

        .macro VMR field          /* result in %rax */
        mov $\field, %edx
        vmread %rdx, %rax
        .endm

/* ------------------------------------------------------------------ reset */
        .section .reset, "ax"
        .code16
reset_start:                       /* linked at 0xfffff000; CS.base = 0xffff0000 */
        cli
        cld
        lgdtl %cs:(0xf000 + gdt_rom_desc - reset_start)
        mov %cr0, %eax
        or $1, %eax                /* CR0.PE */
        mov %eax, %cr0
        ljmpl $0x08, $pm32_rom

        .code32
pm32_rom:
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $STACK_TOP, %esp
        mov $__payload_lma, %esi   /* copy the payload out of ROM */
        mov $PAYLOAD, %edi
        mov $__payload_size, %ecx
        add $3, %ecx
        shr $2, %ecx
        rep movsl
        mov $payload_entry32, %eax
        jmp *%eax

        .balign 8
gdt_rom:
        .quad 0
        .quad 0x00cf9a000000ffff   /* 0x08 code32 flat */
        .quad 0x00cf92000000ffff   /* 0x10 data flat */
gdt_rom_desc:
        .word gdt_rom_desc - gdt_rom - 1
        .long gdt_rom

        .org 0xff0                 /* reset vector at 0xfffffff0 */
        .byte 0xea                 /* ljmp 0xf000:0xf000 = reset_start via the 0xf0000 mirror */
        .word 0xf000, 0xf000
        .org 0x1000

/* ---------------------------------------------------------------- payload */
        .text
        .code32
payload_entry32:
        lgdt gdt_desc
        ljmp $0x08, $1f
1:      mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov %ax, %fs
        mov %ax, %gs
        /* zero the low tables and VMX regions */
        mov $PML4, %edi
        mov $((STACK_TOP - PML4) / 4), %ecx
        xor %eax, %eax
        rep stosl
        /* host: PML4[0] -> PDPT, PDPT[0..3] -> PD0..PD3, 2048 x 2 MiB identity */
        movl $(PDPT | 3), PML4
        mov $PDPT, %edi
        mov $(PD0 | 3), %eax
        mov $4, %ecx
1:      mov %eax, (%edi)
        add $0x1000, %eax
        add $8, %edi
        loop 1b
        mov $PD0, %edi
        mov $0x83, %eax            /* P | RW | PS */
        xor %edx, %edx
        mov $2048, %ecx
1:      mov %eax, (%edi)
        mov %edx, 4(%edi)
        add $0x200000, %eax
        adc $0, %edx
        add $8, %edi
        loop 1b
        /* guest 64-bit: only 0x400000..0x13fffff mapped, read-only (P | US | PS, RW = 0)
           so any guest data write, or access outside the window, faults (#PF ->
           exception exit); US so that CPL-3 guests can fetch their code */
        movl $(GPDPT | 7), GPML4
        movl $(GPD | 7), GPDPT
        mov $(GPD + 2 * 8), %edi
        mov $(PAYLOAD | 0x85), %eax
        mov $8, %ecx
1:      mov %eax, (%edi)
        add $0x200000, %eax
        add $8, %edi
        loop 1b
        /* guest 32-bit: 4 MiB pages 1..4, read-only */
        mov $(GPD32 + 1 * 4), %edi
        mov $(PAYLOAD | 0x85), %eax
        mov $4, %ecx
1:      mov %eax, (%edi)
        add $0x400000, %eax
        add $4, %edi
        loop 1b
        /* long mode: CR4.PAE, CR3, EFER.LME, CR0.PG */
        mov %cr4, %eax
        or $0x20, %eax
        mov %eax, %cr4
        mov $PML4, %eax
        mov %eax, %cr3
        mov $0xc0000080, %ecx
        rdmsr
        or $0x100, %eax
        wrmsr
        mov %cr0, %eax
        or $0x80000001, %eax
        mov %eax, %cr0
        ljmp $0x18, $long64

        .code64
long64:
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $STACK_TOP, %rsp
        /* 64-bit TSS descriptor at GDT 0x20 (base TSS, limit 0x67, type 9) */
        mov $(TSS & 0xffff), %eax
        shl $16, %eax
        or $0x67, %eax
        mov %eax, gdt + 0x20
        movl $(0x00008900 | ((TSS >> 16) & 0xff) | ((TSS >> 24) << 24)), gdt + 0x24
        mov $0x20, %ax
        ltr %ax
        /* IDT: 32 exception stubs, 16 bytes apart */
        mov $IDT, %edi
        mov $exc_stubs, %rax
        mov $32, %ecx
1:      mov %rax, %rdx
        and $0xffff, %edx
        or $(0x18 << 16), %edx
        mov %edx, (%rdi)
        mov %rax, %rdx
        shr $16, %rdx
        shl $16, %rdx
        or $0x8e00, %edx
        mov %edx, 4(%rdi)
        movq $0, 8(%rdi)
        add $16, %rax
        add $16, %rdi
        loop 1b
        lidt idt_desc

        mov $msg_boot, %esi
        call put_str

        /* VMX present? CPUID.1:ECX.VMX[5] */
        mov $1, %eax
        cpuid
        mov %ecx, cpuid1_ecx
        bt $5, %ecx
        jc 1f
        mov $msg_novmx, %esi
        call put_str
        jmp shutdown
1:      /* IA32_FEATURE_CONTROL: lock with VMX outside SMX (SDM 23.7) */
        mov $0x3a, %ecx
        rdmsr
        test $1, %eax
        jnz 1f
        or $5, %eax
        wrmsr
1:      /* CR0/CR4 fixed-1 bits (SDM A.7, A.8: IA32_VMX_CR0_FIXED0 / CR4_FIXED0),
           which include CR0.NE and CR4.VMXE */
        mov $0x486, %ecx
        rdmsr
        mov %cr0, %rbx
        or %eax, %ebx
        or $0x20, %ebx             /* CR0.NE */
        mov %rbx, %cr0
        mov $0x488, %ecx
        rdmsr
        mov %cr4, %rbx
        or %eax, %ebx
        or $0x2000, %ebx           /* CR4.VMXE */
        mov %rbx, %cr4
        /* XSAVE: CR4.OSXSAVE, XCR0 = x87|SSE; IA32_XSS = every supported bit */
        mov cpuid1_ecx, %ecx
        bt $26, %ecx
        jnc 1f
        mov %cr4, %rax
        or $0x40000, %eax
        mov %rax, %cr4
        xor %ecx, %ecx
        mov $3, %eax
        xor %edx, %edx
        xsetbv
        mov $0xd, %eax
        mov $1, %ecx
        cpuid
        mov %eax, xsave_d1_eax
        mov %ecx, xss_supported
        mov %edx, xss_supported + 4
        bt $3, %eax                /* XSAVES/XRSTORS */
        jnc 1f
        mov xss_supported, %rax
        test %rax, %rax
        jz 1f
        mov %eax, %eax
        mov xss_supported + 4, %edx
        mov $0xda0, %ecx
        wrmsr
1:      /* revision id into the VMXON and VMCS regions */
        mov $0x480, %ecx
        rdmsr
        and $0x7fffffff, %eax
        mov %eax, VMXON_REG
        mov %eax, VMCS_REG
        /* controls = (wanted | allowed-0) & allowed-1 (SDM A.3) */
        mov $0x481, %ecx
        mov $0, %ebx
        call adjust_ctl
        mov %eax, ctl_pin
        mov $0x482, %ecx
        /* secondary, unconditional I/O exiting (INS/OUTS exit; issue 16), INVLPG exiting, HLT exiting */
        mov $((1 << 31) | (1 << 24) | (1 << 9) | (1 << 7)), %ebx
        call adjust_ctl
        mov %eax, ctl_proc
        mov $0x48b, %ecx
        /* descriptor-table exiting, RDRAND exiting, enable INVPCID, RDSEED exiting,
           enable XSAVES/XRSTORS (SDM 25.6.2) */
        mov $((1 << 2) | (1 << 11) | (1 << 12) | (1 << 16) | (1 << 20)), %ebx
        call adjust_ctl
        mov %eax, ctl_proc2
        mov $0x483, %ecx
        mov $(1 << 9), %ebx        /* host address-space size */
        call adjust_ctl
        mov %eax, ctl_exit
        mov $0x484, %ecx
        mov $0, %ebx
        call adjust_ctl
        mov %eax, ctl_entry32
        mov $0x484, %ecx
        mov $(1 << 9), %ebx        /* IA-32e mode guest */
        call adjust_ctl
        mov %eax, ctl_entry64
        /* report: CAP <proc2 allowed-1> <proc2 in use> <xss supported> <cr4> <IA32_VMX_BASIC> */
        mov $msg_cap, %esi
        call put_str
        mov $0x48b, %ecx
        rdmsr
        mov $8, %ecx
        call put_hex
        call put_sp
        mov ctl_proc2, %edx
        mov $8, %ecx
        call put_hex
        call put_sp
        mov xss_supported, %rdx
        mov $16, %ecx
        call put_hex
        call put_sp
        mov %cr4, %rdx
        mov $8, %ecx
        call put_hex
        call put_sp
        mov $0x480, %ecx           /* IA32_VMX_BASIC: bit 54 = INS/OUTS instruction information */
        rdmsr
        shl $32, %rdx
        mov %eax, %eax
        or %rax, %rdx
        mov $16, %ecx
        call put_hex
        call put_nl

        vmxon vmxon_ptr
        jbe 1f
        movq $0, cur_group
        jmp run_group
1:      mov $msg_vmxonfail, %esi
        call put_str
        jmp shutdown

/* ------------------------------------------------------------ group loop */
run_group:
        mov $STACK_TOP, %rsp
        mov cur_group, %rax
        cmp group_count, %rax
        jae all_done
        imul $GROUP_SIZE, %rax
        add $groups, %rax
        mov %rax, cur_grp_ptr
        movq $0, cur_index
        mov $msg_group, %esi
        call put_str
        mov cur_group, %rdx
        mov $4, %ecx
        call put_hex
        call put_nl

        vmclear vmcs_ptr
        vmptrld vmcs_ptr
        jbe launch_fail
        mov cur_grp_ptr, %rbx
        mov GRP_FIELDS(%rbx), %rsi
        call write_fields
        mov $common_fields, %esi
        call write_fields
        mov cur_grp_ptr, %rbx
        VMW GUEST_CS_BASE, GRP_CS_BASE(%rbx)
        mov GRP_TABLE(%rbx), %rsi
        VMW GUEST_RIP, (%rsi)
        VMW PIN_CTLS, ctl_pin
        VMW PROC_CTLS, ctl_proc
        VMW PROC_CTLS2, ctl_proc2
        VMW EXIT_CTLS, ctl_exit
        mov ctl_entry32, %eax
        cmpq $64, GRP_CODE_SIZE(%rbx)
        jne 1f
        mov ctl_entry64, %eax
1:      mov %eax, %eax
        mov $ENTRY_CTLS, %edx
        vmwrite %rax, %rdx
        mov %cr0, %rax
        VMW HOST_CR0, %rax
        mov %cr3, %rax
        VMW HOST_CR3, %rax
        mov %cr4, %rax
        VMW HOST_CR4, %rax
        VMW HOST_GDTR_BASE, $gdt
        VMW HOST_RSP, $STACK_TOP
        VMW HOST_RIP, $vmexit
        vmlaunch
launch_fail:
        mov $msg_launchfail, %esi
        call put_str
        VMR VM_INSTR_ERROR
        mov %rax, %rdx
        mov $4, %ecx
        call put_hex
        call put_nl
next_group:
        incq cur_group
        jmp run_group

all_done:
        mov $msg_end, %esi
        call put_str
shutdown:
        mov $msg_shutdown, %esi
        mov $0x8900, %dx
1:      lodsb
        test %al, %al
        jz 2f
        out %al, %dx
        jmp 1b
2:      cli
        hlt
        jmp 2b

/* ------------------------------------------------------------- VM exits */
vmexit:
        VMR EXIT_REASON
        mov %rax, %r12
        VMR EXIT_QUAL
        mov %rax, %r13
        VMR EXIT_INSTR_INFO
        mov %rax, %r14
        VMR GUEST_RIP
        mov %rax, %r15
        VMR EXIT_INSTR_LEN
        mov %rax, %rbx
        VMR EXIT_INTR_INFO
        mov %rax, %rbp
        VMR GUEST_LINEAR
        mov %rax, %r11
        OUTC 'X'
        call put_sp
        mov %r12, %rdx
        mov $8, %ecx
        call put_hex
        call put_sp
        mov %r13, %rdx
        mov $16, %ecx
        call put_hex
        call put_sp
        mov %r14, %rdx
        mov $8, %ecx
        call put_hex
        call put_sp
        mov %r15, %rdx
        mov $16, %ecx
        call put_hex
        call put_sp
        mov %rbx, %rdx
        mov $2, %ecx
        call put_hex
        call put_sp
        mov %rbp, %rdx
        mov $8, %ecx
        call put_hex
        call put_sp
        mov %r11, %rdx             /* guest-linear address (INS/OUTS; stale otherwise) */
        mov $16, %ecx
        call put_hex
        call put_nl
        bt $31, %r12d              /* VM-entry failure */
        jc next_group
        cmp $18, %r12d             /* VMCALL ends the group */
        je next_group
        /* resume at the first case start after the exiting RIP */
        mov cur_grp_ptr, %rbx
        mov GRP_TABLE(%rbx), %rsi
        mov GRP_COUNT(%rbx), %r8
        mov cur_index, %rcx
1:      cmp %r8, %rcx
        ja next_group
        mov (%rsi,%rcx,8), %rax
        cmp %r15, %rax
        ja 2f
        inc %rcx
        jmp 1b
2:      mov %rcx, cur_index
        VMW GUEST_RIP, %rax
        vmresume
        mov $msg_resumefail, %esi
        call put_str
        jmp next_group

/* ------------------------------------------------------------ helpers */
/* ecx = capability MSR, ebx = wanted bits -> eax = usable control value */
adjust_ctl:
        rdmsr
        or %eax, %ebx
        and %edx, %ebx
        mov %ebx, %eax
        ret

/* rsi -> (field, value) quad pairs, field -1 ends */
write_fields:
1:      mov (%rsi), %rdx
        cmp $-1, %rdx
        je 2f
        mov 8(%rsi), %rax
        vmwrite %rax, %rdx
        jbe 3f
        add $16, %rsi
        jmp 1b
2:      ret
3:      push %rsi
        mov $msg_vmwfail, %esi
        call put_str
        pop %rsi
        mov (%rsi), %rdx
        mov $4, %ecx
        call put_hex
        call put_nl
        add $16, %rsi
        jmp 1b

put_str:
        lodsb
        test %al, %al
        jz 1f
        out %al, $0xe9
        jmp put_str
1:      ret

put_sp: OUTC ' '
        ret
put_nl: OUTC '\n'
        ret

/* rdx = value, ecx = number of hex digits */
put_hex:
1:      dec %ecx
        js 2f
        mov %rdx, %rax
        push %rcx
        shl $2, %ecx
        shr %cl, %rax
        pop %rcx
        and $0xf, %eax
        mov hexdigits(%rax), %al
        out %al, $0xe9
        jmp 1b
2:      ret

/* host exceptions: print vector and RIP, then quit */
        .balign 16
exc_stubs:
        .set vec, 0
        .rept 32
        .balign 16
        push $vec
        jmp exc_common
        .set vec, vec + 1
        .endr
exc_common:
        mov $msg_exc, %esi
        call put_str
        mov (%rsp), %rdx
        mov $2, %ecx
        call put_hex
        call put_sp
        mov 16(%rsp), %rdx         /* RIP (or error code for vectors with one) */
        mov $16, %ecx
        call put_hex
        call put_sp
        mov 24(%rsp), %rdx
        mov $16, %ecx
        call put_hex
        call put_nl
        jmp shutdown

/* -------------------------------------------------------------- data */
        .data
        .balign 16
gdt:
        .quad 0
        .quad 0x00cf9a000000ffff   /* 0x08 code32 */
        .quad 0x00cf92000000ffff   /* 0x10 data */
        .quad 0x00af9a000000ffff   /* 0x18 code64 */
        .quad 0, 0                 /* 0x20 TSS64, filled in */
gdt_end:
gdt_desc:
        .word gdt_end - gdt - 1
        .quad gdt
idt_desc:
        .word 32 * 16 - 1
        .quad IDT
        .balign 8
vmxon_ptr:   .quad VMXON_REG
vmcs_ptr:    .quad VMCS_REG
cur_group:   .quad 0
cur_grp_ptr: .quad 0
cur_index:   .quad 0
xss_supported: .quad 0
cpuid1_ecx:  .long 0
xsave_d1_eax: .long 0
ctl_pin:     .long 0
ctl_proc:    .long 0
ctl_proc2:   .long 0
ctl_exit:    .long 0
ctl_entry32: .long 0
ctl_entry64: .long 0
hexdigits:   .ascii "0123456789abcdef"
msg_boot:    .asciz "BOOT vmxaddr-vmm\n"
msg_novmx:   .asciz "NOVMX\n"
msg_vmxonfail: .asciz "VMXONFAIL\n"
msg_cap:     .asciz "CAP "
msg_group:   .asciz "G "
msg_launchfail: .asciz "LAUNCHFAIL "
msg_resumefail: .asciz "RESUMEFAIL\n"
msg_vmwfail: .asciz "VMWRITEFAIL "
msg_exc:     .asciz "EXC "
msg_end:     .asciz "END\n"
msg_shutdown: .asciz "Shutdown"
