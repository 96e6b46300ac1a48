"""The SDM rules the reference model applies, each with a stable id, its source and plain words.

Sources are named by volume and section *title*, because section numbers move between SDM
editions (the VM-exit chapter was 27 in 2016-2022 editions and 28 since); the titles have not.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rule:
    """One SDM rule a model applies: its id, title, where the SDM says it, and the words."""
    id: str
    title: str
    source: str
    words: str


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("mode", "An instruction not recognized in the current mode faults before any VM exit",
         "SDM Vol. 3C, VMX Instruction Reference (Operation of VMPTRLD etc.: #UD if CR0.PE = 0, "
         "RFLAGS.VM = 1, or IA32_EFER.LMA = 1 and CS.L = 0); Vol. 2, the Real-Address and "
         "Virtual-8086 Mode Exceptions of INVPCID, LLDT, LTR, SLDT, STR",
         "In real-address, virtual-8086 and compatibility mode a VMX instruction raises #UD; it "
         "never reaches the hypervisor from hardware. SLDT/STR/LLDT/LTR are #UD in real and "
         "virtual-8086 mode; INVPCID raises #GP(0) in virtual-8086 mode (not recognized there: a "
         "privilege-based fault, so also before the exit). Derivation: docs/ud-and-cpl.md."),
    Rule("cpl", "CPL > 0 raises #GP(0): after the VM exit for a VMX instruction (the hypervisor "
         "checks it), before it for LGDT, LIDT, LLDT, LTR, INVPCID, XSAVES, XRSTORS",
         "SDM Vol. 3C, VMX Instruction Reference (… ELSIF in VMX non-root operation THEN VM exit; "
         "ELSIF CPL > 0 THEN #GP(0)); Vol. 3C 'Relative Priority of Faults and VM Exits'; Vol. 2, "
         "the privileged instructions' Protected Mode Exceptions",
         "For VMX instructions the VM exit comes before the privilege check, so an emulating "
         "hypervisor must raise #GP(0) when CPL > 0. Privileged non-VMX instructions (LGDT, "
         "LIDT, LLDT, LTR, INVPCID, XSAVES, XRSTORS) check CPL before the exit; in virtual-8086 "
         "mode (CPL 3) LGDT, LIDT, XSAVES and XRSTORS therefore raise #GP(0)."),
    Rule("register-operand", "A register operand has no memory address",
         "SDM Vol. 3C, 'Information for VM Exits Due to Instruction Execution' (bit 10, Mem/Reg)",
         "When bit 10 says register, the memory fields are undefined and there is nothing to "
         "compute."),
    Rule("exit-qualification", "The exit qualification holds the displacement",
         "SDM Vol. 3C, 'Exit Qualification for VM Exits Due to Instruction Execution' "
         "(Basic VM-Exit Information)",
         "The exit qualification is the displacement, sign-extended to 64 bits (for RIP-relative "
         "operands: displacement + the RIP of the next instruction). Bits beyond the address "
         "size are undefined, so only the low address-size bits may be used, sign-extended."),
    Rule("string-operand", "INS and OUTS address their element through rDI or rSI",
         "SDM Vol. 2 INS/OUTS; Vol. 3C 'Exit Qualification for I/O Instructions', the INS/OUTS "
         "instruction-information table and 'Relative Priority of Faults and VM Exits'",
         "INS writes ES:[rDI] (no override), OUTS reads DS:[rSI] (override allowed; the processor "
         "reports the segment in bits 17:15). rDI/rSI are read in the address size (bits 9:7); the "
         "exit qualification is the I/O qualification (size, direction, string, REP, port), not a "
         "displacement. The exit comes before the unusable-segment and limit #GP, so the hypervisor "
         "checks them; the first element's linear address is also reported in the guest-linear-"
         "address field."),
    Rule("apx-extended", "With APX the extended instruction-information field names R16-R31",
         "Intel APX architecture specification (784266), VMX chapter, as quoted on the kvm list; the "
         "layout from KVM's posted series 'KVM: x86: Enable APX for guests' v2 patch 04/16",
         "A processor that enumerates APX writes a 64-bit field (VMCS 0x2406) with 5-bit register "
         "numbers besides the 32-bit one; a hypervisor reads the registers from it. The 32-bit field "
         "cannot name R16-R31."),
    Rule("effective-address", "Effective address = base + index x scale + displacement, "
         "modulo 2^address-size",
         "SDM Vol. 1, 'Specifying an Offset' and 'Operand-Size and Address-Size Attributes'",
         "The offset is computed in the instruction's address size (16, 32 or 64 bits) and wraps "
         "there; bits of base and index above the address size take no part."),
    Rule("segment", "The segment is the override, else DS, or SS for an rBP/rSP base",
         "SDM Vol. 1, 'Segment Registers' (default segment selection rules); Vol. 3C "
         "instruction-information bits 17:15",
         "The processor reports the segment the access uses in bits 17:15; the hypervisor reads "
         "it from there."),
    Rule("segment-base-64", "In 64-bit mode only FS and GS have a base",
         "SDM Vol. 1, 'Segment Registers in 64-Bit Mode'",
         "In 64-bit mode the bases of CS, DS, ES and SS are treated as 0; FS and GS keep theirs. "
         "The linear address is not truncated to the address size."),
    Rule("linear-32", "Outside 64-bit mode the linear address wraps at 4 GiB",
         "SDM Vol. 3A, 'Logical and Linear Addresses'",
         "Linear address = (segment base + effective address) modulo 2^32, whatever the address "
         "size."),
    Rule("canonical", "A 64-bit-mode linear address must be canonical",
         "SDM Vol. 1, 'Canonical Addressing'; Vol. 3A, 'Linear-Address Translation' (LA57)",
         "Bits 63:47 (63:56 with CR4.LA57 = 1) must all equal bit 47 (bit 56), for the first and the "
         "last byte accessed. A non-canonical address raises #SS(0) when the segment is SS, #GP(0) "
         "otherwise. With linear-address masking (LAM) the metadata bits are first replaced by "
         "copies of bit 47 or 56 (bit 63 kept), and the untagged address is the one checked and "
         "translated."),
    Rule("unusable", "An unusable segment cannot be used",
         "SDM Vol. 3C, 'Guest Register State' (the unusable bit); the VMX instructions' "
         "Protected Mode Exceptions (#GP(0)/#SS(0) if the register contains an unusable segment)",
         "Outside 64-bit mode, an access through an unusable (null) segment raises #GP(0), or "
         "#SS(0) through SS."),
    Rule("type", "Writes need a writable data segment; reads need a readable one",
         "SDM Vol. 3A, Protection: 'Type Checking'",
         "Writing to a read-only data segment or to any code segment raises #GP(0); reading from "
         "an execute-only code segment raises #GP(0). Type faults are #GP even through SS."),
    Rule("limit", "Every byte accessed must lie within the segment limit",
         "SDM Vol. 3A, Protection: 'Limit Checking'",
         "Expand-up: the last byte, offset + size - 1, must not exceed the limit. Expand-down: "
         "valid offsets run from limit + 1 to 0xFFFF (B = 0) or 0xFFFFFFFF (B = 1). A violation "
         "raises #SS(0) through SS, #GP(0) otherwise."),
    Rule("alignment", "XSAVES/XRSTORS need a 64-byte-aligned operand",
         "SDM Vol. 2, XSAVES and XRSTORS (Protected, Real-Address and 64-Bit Mode Exceptions: #GP(0) "
         "'If a memory operand is not aligned on a 64-byte boundary, regardless of segment'); Vol. 3C "
         "'Relative Priority of Faults and VM Exits'; Vol. 3A 'Priority Among Simultaneous Exceptions "
         "and Interrupts'",
         "The linear address of the XSAVE area must be a multiple of 64, else #GP(0), even through SS. "
         "The check comes after the VM exit, so an emulating hypervisor must make it. The SDM leaves "
         "its order against the segment checks to the implementation; vmxaddr makes the usability, "
         "type, limit and canonical checks first, so a misaligned operand that also fails an SS "
         "check gives #SS(0)."),
    Rule("flat", "At a 4-GiB limit the limit fault is implementation-specific",
         "SDM Vol. 3A, Protection: 'Limit Checking' (\"When the effective limit is FFFFFFFFH "
         "(4 GBytes), these accesses may or may not cause the indicated exceptions\")",
         "An access that crosses a limit of 0xFFFFFFFF may or may not fault; both answers are "
         "right. KVM 34333cc6 reports that VMX-capable processors do not fault."),
)}


def cite(rule_id: str) -> str:
    """Where the SDM gives rule `rule_id` (section and title)."""
    return RULES[rule_id].source
