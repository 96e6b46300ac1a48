/*
 * tinyvmx.c — the memory-operand decoder of a small (imaginary) hypervisor, as a vmxaddr adapter.
 *
 * It follows the SDM (Vol. 3C §28.2.1 and §28.2.5 for the exit information; Vol. 1 §3.7.5 for
 * the effective address; Vol. 3A §3.4.5 and §5.3 for the segment checks) — except for ONE
 * planted bug, which `vmxaddr fuzz` finds and shrinks to a minimal witness:
 *
 *     vmxaddr fuzz --model c:docs/examples/tinyvmx.c:tinyvmx_operand --against sdm --time 20
 *
 * (docs/real-code.md shows the output.) Build it yourself with
 *     cc -O2 -shared -fPIC -I vmxaddr/realcode/shim -o libtinyvmx.so docs/examples/tinyvmx.c
 * and run it as c:libtinyvmx.so:tinyvmx_operand.
 */
#include "vmxaddr.h"

VMXADDR_EXPORT_LAYOUT;  /* sizes and offsets, checked by vmxaddr at load time */

/* the instructions this decoder serves (vmxaddr fuzzes only these) */
const char vmxaddr_mnemonics[] = "vmptrld,vmptrst,vmclear,vmxon,vmread,vmwrite,invept,invvpid";

#define EXIT_VMREAD 23
#define EXIT_VMWRITE 25

static uint64_t sign_extend(uint64_t v, unsigned bits)
{
	uint64_t sign = 1ull << (bits - 1), mask = bits == 64 ? ~0ull : (1ull << bits) - 1;
	v &= mask;
	return (v ^ sign) - sign;
}

static int canonical(uint64_t la, int la57)
{
	unsigned bits = la57 ? 57 : 48;
	return sign_extend(la, bits) == la;
}

/* Linear-address masking (Intel ISE "Linear Address Masking"): the metadata bits 62:bit+1 take
 * the value of bit `bit`; bit 63 stays. */
static uint64_t lam_untag(const struct vmxaddr_state *st, uint64_t la)
{
	unsigned bit;
	if (la >> 63) {
		if (!(st->cr4 & VMXADDR_CR4_LAM_SUP))
			return la;
		bit = st->cr4 & VMXADDR_CR4_LA57 ? 56 : 47;
	} else if (st->cr3 & VMXADDR_CR3_LAM_U57) {
		bit = 56;
	} else if (st->cr3 & VMXADDR_CR3_LAM_U48) {
		bit = 47;
	} else {
		return la;
	}
	return (sign_extend(la, bit + 1) & ~(1ull << 63)) | (la & (1ull << 63));
}

static int fault(struct vmxaddr_result *out, unsigned vector, int has_code)
{
	out->status = VMXADDR_FAULT;
	out->vector = vector;
	out->error_code = 0;
	if (has_code)
		out->valid |= VMXADDR_HAVE_ERROR_CODE;
	return 0;
}

int tinyvmx_operand(const struct vmxaddr_exit *exit, const struct vmxaddr_state *st,
                    const struct vmxaddr_access *acc, struct vmxaddr_result *out)
{
	uint32_t info = exit->instruction_info;
	unsigned asz = 16u << ((info >> 7) & 7), seg = (info >> 15) & 7;
	const struct vmxaddr_segment *s;
	uint64_t disp, ea, base, la, last;
	unsigned vector;

	/* VMX instructions: #UD outside protected and 64-bit mode, #GP(0) above CPL 0 */
	if (st->mode != VMXADDR_MODE_PROTECTED && st->mode != VMXADDR_MODE_64BIT)
		return fault(out, VMXADDR_VECTOR_UD, 0);
	if (st->cpl > 0)
		return fault(out, VMXADDR_VECTOR_GP, 1);
	if (info & (1u << 10)) {  /* register operand */
		if (exit->exit_reason == EXIT_VMREAD || exit->exit_reason == EXIT_VMWRITE) {
			out->status = VMXADDR_NO_MEMORY;
			return 0;
		}
		return fault(out, VMXADDR_VECTOR_UD, 0);
	}
	if (asz > 64 || seg > 5)
		return fault(out, VMXADDR_VECTOR_UD, 0);  /* vmxaddr never sends these (they raise InvalidExitInfo) */

	disp = sign_extend(exit->exit_qualification, asz);  /* bits above the address size are undefined */
	ea = disp;
	if (!(info & (1u << 27)))
		ea += st->gpr[(info >> 23) & 15];
	if (!(info & (1u << 22)))
		ea += st->gpr[(info >> 18) & 15] << (info & 3);
	if (asz < 64)
		ea &= (1ull << asz) - 1;
	s = &st->seg[seg];
	vector = seg == VMXADDR_SS ? VMXADDR_VECTOR_SS : VMXADDR_VECTOR_GP;

	if (st->mode == VMXADDR_MODE_64BIT) {
		base = s->base;  /* PLANTED BUG: in 64-bit mode only FS and GS have a base (SDM Vol. 1 §3.4.2.1) */
		la = lam_untag(st, base + ea);  /* the address translated: metadata bits removed */
		last = la + (acc->size ? acc->size : 1) - 1;
		if (!canonical(la, st->cr4 & VMXADDR_CR4_LA57) || !canonical(last, st->cr4 & VMXADDR_CR4_LA57))
			fault(out, vector, 1);
		else
			out->status = VMXADDR_OK;
	} else {
		base = s->base;
		la = (base + ea) & 0xffffffffull;
		last = ea + acc->size - 1;
		if (s->unusable) {
			fault(out, vector, 1);
		} else if ((acc->write && ((s->type & 8) || !(s->type & 2))) ||
		           (!acc->write && (s->type & 8) && !(s->type & 2))) {
			fault(out, VMXADDR_VECTOR_GP, 1);  /* read-only data or code for a write; execute-only code for a read */
		} else if ((s->type & 0xc) == 4) {  /* expand-down data: valid offsets limit+1 .. 0xffff or 0xffffffff */
			if (ea <= s->limit || last > (s->db ? 0xffffffffull : 0xffffull))
				fault(out, vector, 1);
			else
				out->status = VMXADDR_OK;
		} else if (last > s->limit) {
			fault(out, vector, 1);
		} else {
			out->status = VMXADDR_OK;
		}
	}
	out->effective_address = ea;
	out->linear_address = la;
	out->segment_base = base;
	out->displacement = disp;
	out->segment = seg;
	out->valid |= VMXADDR_HAVE_EFFECTIVE_ADDRESS | VMXADDR_HAVE_LINEAR_ADDRESS | VMXADDR_HAVE_SEGMENT |
	              VMXADDR_HAVE_SEGMENT_BASE | VMXADDR_HAVE_DISPLACEMENT;
	return 0;
}
