/*
 * xen_adapter.c — runs an extracted decode_vmx_inst() (Xen's vvmx.c) as a vmxaddr model
 * (vmxaddr.h). Compiled in one translation unit after xen.h and the extracted functions.
 *
 * What the adapter adds is what Xen does around decode_vmx_inst(), written for vmxaddr from
 * reading Xen 4.17's vvmx.c:
 *   1. nvmx_handle_vmx_insn(): #UD unless vmx_guest_x86_mode() is at least 8 (64-bit) under
 *      EFER.LMA, at least 2 (protected mode, not virtual-8086) otherwise; then #GP(0) when
 *      vmx_get_cpl() > 0. Its other #UD conditions (CR4.VMXE clear, nested HVM disabled, not in
 *      VMX operation) are taken as passed: vmxaddr models a guest hypervisor in VMX operation.
 *   2. the handler's call: nvmx_handle_vmread() passes no operand buffer (NULL); VMXON, VMPTRLD,
 *      VMPTRST, VMCLEAR, VMWRITE, INVEPT and INVVPID pass an unsigned long, so decode_vmx_inst()
 *      fetches the operand from guest memory (xen.h's hvm_copy_from_guest_linear()).
 * Everything after that is the real code's: the linear address it stores in decode->mem and the
 * exception it injects (xen.h's exception slot). The access vmxaddr describes (size, direction)
 * is not passed: decode_vmx_inst() derives its length from the address size.
 */
#include "xen.h"

#define VMXADDR_EXIT_VMREAD 23

/* What one call did, for explain (vmxaddr.realcode.xen_compiled reads it through ctypes). */
struct vmxaddr_xen_trace {
	int32_t stage;             /* 0: decode_vmx_inst() ran; 1: the mode check's #UD; 2: the CPL check's #GP */
	int32_t returned;          /* decode_vmx_inst()'s return value (X86EMUL_OKAY 0, X86EMUL_EXCEPTION 2) */
	int32_t queued;            /* exceptions injected */
	uint32_t vector;
	int32_t error_code;        /* -1: none */
	int32_t line;              /* of the injecting call */
	const char *file;          /* ... in this file (vvmx.c's path, or the adapter) */
	uint32_t registers_read;   /* bit n: register n read (decode_gpr) */
	int32_t segment_read;      /* -1: none */
	int32_t decoded_type;      /* VMX_INST_MEMREG_TYPE_MEMORY 0 / _REG 1 */
	uint32_t decoded_len;      /* decode->len */
	uint64_t decoded_mem;      /* decode->mem */
	uint64_t fetch_address;    /* hvm_copy_from_guest_linear() */
	uint32_t fetch_asked, fetch_copied;
	uint64_t unknown_vmcs_field;
	int32_t x86_mode;          /* vmx_guest_x86_mode() */
	int32_t exit_qualification_read;  /* __vmread(EXIT_QUALIFICATION) was called */
};

const uint32_t vmxaddr_xen_trace_size = sizeof(struct vmxaddr_xen_trace);

static void vmxaddr_xen_run(const struct vmxaddr_exit *exit, const struct vmxaddr_state *state,
                            struct vmxaddr_xen_trace *t)
{
	struct vcpu v;
	struct vmx_inst_decoded decode;
	unsigned long operand = 0;

	memset(&v, 0, sizeof(v));
	memset(&decode, 0, sizeof(decode));
	memset(t, 0, sizeof(*t));
	v.state = state;
	v.exit = exit;
	v.segment_read = -1;
	memcpy(v.regs.gpr, state->gpr, sizeof(v.regs.gpr));
	v.regs.rip = state->rip;
	v.regs.eflags = state->rflags;
	v.exception.error_code = X86_EVENT_NO_EC;
	current = &v;

	t->x86_mode = vmx_guest_x86_mode(&v);
	if (t->x86_mode < (hvm_long_mode_active(&v) ? X86_MODE_64BIT : X86_MODE_16BIT)) {
		hvm_inject_hw_exception(TRAP_invalid_op, X86_EVENT_NO_EC);
		t->stage = 1;
		t->returned = X86EMUL_EXCEPTION;
	} else if (vmx_get_cpl() > 0) {
		hvm_inject_hw_exception(TRAP_gp_fault, 0);
		t->stage = 2;
		t->returned = X86EMUL_EXCEPTION;
	} else {
		t->returned = decode_vmx_inst(&v.regs, &decode,
		                              exit->exit_reason == VMXADDR_EXIT_VMREAD ? NULL : &operand);
	}
	current = NULL;

	t->queued = v.exception.queued;
	t->vector = v.exception.vector;
	t->error_code = v.exception.error_code;
	t->line = v.exception.line;
	t->file = v.exception.file;
	t->registers_read = v.registers_read;
	t->segment_read = v.segment_read;
	t->decoded_type = decode.type;
	t->decoded_len = decode.type == VMX_INST_MEMREG_TYPE_MEMORY ? decode.len : 0;
	t->decoded_mem = decode.type == VMX_INST_MEMREG_TYPE_MEMORY ? decode.mem : 0;
	t->fetch_address = v.fetch_address;
	t->fetch_asked = v.fetch_asked;
	t->fetch_copied = v.fetch_copied;
	t->unknown_vmcs_field = v.unknown_vmcs_field;
	t->exit_qualification_read = v.exit_qualification_read;
}

/* The model: vmxaddr.h's adapter. reserved0: bits 15:0, the registers whose values reach the
 * answer (read for a memory operand: vmxaddr passes only the operand's base and index, and checks
 * this report); bit 30, more than one exception injected; bit 31, a VMCS field xen.h does not hold
 * was read (neither happens: either makes vmxaddr report an error). The segment reported is the
 * one hvm_get_segment_register() read. The other state decode_vmx_inst() and the checks read is
 * what vmxaddr always passes: CR0, RFLAGS, EFER, CPL and CS.L; CS.D is read but decides nothing
 * (vmx_guest_x86_mode() then returns 2 or 4, and only < 2 and == 8 matter). */
int vmxaddr_xen(const struct vmxaddr_exit *exit, const struct vmxaddr_state *state,
                const struct vmxaddr_access *access, struct vmxaddr_result *out)
{
	struct vmxaddr_xen_trace t;

	(void)access;
	vmxaddr_xen_run(exit, state, &t);
	*out = (struct vmxaddr_result){ 0 };
	if (t.decoded_type == VMX_INST_MEMREG_TYPE_MEMORY)
		out->reserved0 = t.registers_read & 0xffffu;
	if (t.queued > 1)
		out->reserved0 |= 1u << 30;
	if (t.unknown_vmcs_field)
		out->reserved0 |= 1u << 31;
	if (t.segment_read >= 0) {
		out->segment = (uint32_t)t.segment_read;
		out->valid |= VMXADDR_HAVE_SEGMENT;
	}
	if (t.queued) {
		out->status = VMXADDR_FAULT;
		out->vector = t.vector;
		if (t.error_code != X86_EVENT_NO_EC) {
			out->error_code = (uint32_t)t.error_code;
			out->valid |= VMXADDR_HAVE_ERROR_CODE;
		}
		return 0;
	}
	if (t.decoded_type == VMX_INST_MEMREG_TYPE_REG) {
		out->status = VMXADDR_NO_MEMORY;
		return 0;
	}
	out->status = VMXADDR_OK;
	out->linear_address = t.decoded_mem;
	out->valid |= VMXADDR_HAVE_LINEAR_ADDRESS;
	if (t.exit_qualification_read) {
		/* the displacement decode_vmx_inst() read, as __vmread gave it (all 64 bits) */
		out->displacement = exit->exit_qualification;
		out->valid |= VMXADDR_HAVE_DISPLACEMENT;
	}
	return 0;
}

/* The same call, with everything it did (for explain). */
int vmxaddr_xen_explain(const struct vmxaddr_exit *exit, const struct vmxaddr_state *state,
                        const struct vmxaddr_access *access, struct vmxaddr_xen_trace *trace)
{
	(void)access;
	vmxaddr_xen_run(exit, state, trace);
	return 1;
}
