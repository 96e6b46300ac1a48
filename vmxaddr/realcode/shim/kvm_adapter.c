/*
 * kvm_adapter.c — runs an extracted get_vmx_mem_address() as a vmxaddr model (vmxaddr.h).
 *
 * Compiled in one translation unit after kvm.h and the extracted function(s). What the adapter
 * adds is what KVM's VMX-instruction handlers (arch/x86/kvm/vmx/nested.c) do before they call
 * get_vmx_mem_address(), written for vmxaddr:
 *   1. nested_vmx_check_permission(): CPL > 0 -> #GP(0) (every VMX-instruction handler;
 *      handle_vmxon() makes the same check after its CR0/CR4/feature checks, which vmxaddr does not
 *      model). handle_invpcid() (vmx.c) makes none: INVPCID checks CPL before the VM exit;
 *   2. handle_vmread() / handle_vmwrite(): with bit 10 of the instruction information set the
 *      operand is a register, and get_vmx_mem_address() is not called;
 *   3. the call, with the access's direction (`wr`) and length (`len`) as the handler passes them
 *      (vmxaddr's Access: 8 for VMPTRLD/VMPTRST/VMCLEAR/VMXON, 16 for INVEPT/INVVPID, 4 or 8 for
 *      VMREAD/VMWRITE by the operand size).
 * Everything after that is the real code's: the address it returns through *ret and the
 * exception it queues (kvm.h's exception slot).
 */
#include "kvm.h"

#define VMXADDR_EXIT_VMREAD 23
#define VMXADDR_EXIT_VMWRITE 25
#define VMXADDR_EXIT_INVPCID 58

int vmxaddr_kvm(const struct vmxaddr_exit *exit, const struct vmxaddr_state *state,
                const struct vmxaddr_access *access, struct vmxaddr_result *out)
{
	struct kvm_vcpu vcpu = { .state = state, .segment_read = -1 };
	gva_t gva = 0;
	int r;

	*out = (struct vmxaddr_result){ 0 };  /* (vmxaddr zeroes it too; this adapter does not rely on that) */
	if (state->cpl > 0 && exit->exit_reason != VMXADDR_EXIT_INVPCID) {
		out->status = VMXADDR_FAULT;
		out->vector = GP_VECTOR;
		out->error_code = 0;
		out->valid = VMXADDR_HAVE_ERROR_CODE;
		return 0;
	}
	if ((exit->exit_reason == VMXADDR_EXIT_VMREAD || exit->exit_reason == VMXADDR_EXIT_VMWRITE)
	    && (exit->instruction_info & (1u << 10))) {
		out->status = VMXADDR_NO_MEMORY;
		return 0;
	}
	r = get_vmx_mem_address(&vcpu, exit->exit_qualification, exit->instruction_info,
	                        access->write != 0, (int)access->size, &gva);
	(void)r;  /* 1 when an exception was queued: the slot says which */
	/* which registers the function read: vmxaddr passes only the operand's (vmxaddr.realcode.bridge) */
	out->reserved0 = (u32)vcpu.registers_read;
	if (vcpu.segment_read >= 0) {
		out->segment = (u32)vcpu.segment_read;
		out->valid |= VMXADDR_HAVE_SEGMENT;
		/* *ret is written once the segment is known, on both paths (long mode and not) */
		out->linear_address = gva;
		out->valid |= VMXADDR_HAVE_LINEAR_ADDRESS;
	}
	if (vcpu.exception.queued) {
		out->status = VMXADDR_FAULT;
		out->vector = vcpu.exception.vector;
		out->error_code = vcpu.exception.error_code;
		if (vcpu.exception.has_error_code)
			out->valid |= VMXADDR_HAVE_ERROR_CODE;
	} else {
		out->status = VMXADDR_OK;
	}
	return 0;
}

/* The same call again, for `explain`: which line of the extracted file queued the exception,
 * how many exceptions were queued, and which registers were read (kept out of the result, so
 * that the result means only what vmxaddr.h says). */
int vmxaddr_kvm_explain(const struct vmxaddr_exit *exit, const struct vmxaddr_state *state,
                        const struct vmxaddr_access *access, struct vmxaddr_result *out, int *line,
                        int *queued, int *registers_read)
{
	struct kvm_vcpu vcpu = { .state = state, .segment_read = -1 };
	gva_t gva = 0;

	(void)out;
	*line = 0;
	*queued = 0;
	*registers_read = 0;
	if ((state->cpl > 0 && exit->exit_reason != VMXADDR_EXIT_INVPCID) || ((exit->exit_reason == VMXADDR_EXIT_VMREAD || exit->exit_reason == VMXADDR_EXIT_VMWRITE)
	                       && (exit->instruction_info & (1u << 10))))
		return 0;
	get_vmx_mem_address(&vcpu, exit->exit_qualification, exit->instruction_info, access->write != 0,
	                    (int)access->size, &gva);
	*line = vcpu.exception.line;
	*queued = vcpu.exception.queued;
	*registers_read = vcpu.registers_read;
	return 1;
}
