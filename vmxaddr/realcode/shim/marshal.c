/*
 * marshal.c — the bridge's fast path: a CPython extension (_vmxaddr_marshal) that fills the
 * vmxaddr.h structures straight from vmxaddr's Python objects, calls an adapter through the
 * function pointer ctypes found, and returns the raw result as a tuple.
 *
 *     call(fnptr, exit, state, access, operand_only) -> (status, vector, error_code, valid,
 *          effective_address, linear_address, segment_base, displacement, segment, reserved)
 *     pack(buffer, offset, exit, state, access, operand_only)   (for the worker process)
 *
 * It does what vmxaddr/realcode/bridge.py's pure-ctypes path does (that path stays, and a test
 * checks the two agree), without building Python integers and struct arguments per field. With
 * operand_only, only the operand's base and index registers and its segment are filled (kvm.h
 * reports every register and segment the function reads; the caller checks the report).
 * Written for vmxaddr (MIT).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "vmxaddr.h"

static PyObject *reasons;  /* dict: mnemonic -> exit reason */
static PyObject *s_regs, *s_rip, *s_mode, *s_cpl, *s_la57, *s_lam_sup, *s_lam_u48, *s_lam_u57;
static PyObject *s_seg[6];
static PyObject *s_base, *s_limit, *s_selector, *s_type, *s_s, *s_dpl, *s_p, *s_db, *s_g, *s_l, *s_unusable;

static int attr_u64(PyObject *o, PyObject *name, uint64_t *out)
{
	PyObject *v = PyObject_GetAttr(o, name);
	if (!v)
		return -1;
	*out = PyLong_AsUnsignedLongLongMask(v);
	Py_DECREF(v);
	return PyErr_Occurred() ? -1 : 0;
}

static int attr_true(PyObject *o, PyObject *name)
{
	PyObject *v = PyObject_GetAttr(o, name);
	int r;
	if (!v)
		return -1;
	r = PyObject_IsTrue(v);
	Py_DECREF(v);
	return r;
}

static int fill_segment(PyObject *state, int i, struct vmxaddr_segment *seg, int cs_l)
{
	PyObject *s = PyObject_GetAttr(state, s_seg[i]);
	uint64_t v[10];
	PyObject *names[10] = { s_base, s_limit, s_selector, s_type, s_s, s_dpl, s_p, s_db, s_g, s_l };
	int k, u;

	if (!s)
		return -1;
	for (k = 0; k < 10; k++) {
		if (attr_u64(s, names[k], &v[k]) < 0) {
			Py_DECREF(s);
			return -1;
		}
	}
	u = attr_true(s, s_unusable);
	Py_DECREF(s);
	if (u < 0)
		return -1;
	seg->base = v[0];
	seg->limit = (uint32_t)v[1];
	seg->selector = (uint16_t)v[2];
	seg->type = (uint8_t)(v[3] & 15);
	seg->s = (uint8_t)(v[4] & 1);
	seg->dpl = (uint8_t)(v[5] & 3);
	seg->p = (uint8_t)(v[6] & 1);
	seg->db = (uint8_t)(v[7] & 1);
	seg->g = (uint8_t)(v[8] & 1);
	seg->l = (uint8_t)((i == VMXADDR_CS ? (uint64_t)cs_l : v[9]) & 1);
	seg->unusable = (uint8_t)u;
	return 0;
}

static int mode_number(PyObject *mode)
{
	static const char *names[] = { "real", "virtual-8086", "protected", "compatibility", "64-bit" };
	int i;
	for (i = 0; i < 5; i++)
		if (PyUnicode_CompareWithASCIIString(mode, names[i]) == 0)
			return i;
	return -1;
}

/* The same derivation as bridge.control_registers(): the mode decides CR0.PE/PG, RFLAGS.VM,
 * EFER.LME/LMA, CR4.PAE and CS.L; CPL is 0 in real and 3 in virtual-8086 mode. */
static int fill_state(PyObject *state, struct vmxaddr_state *st, int operand_only, uint32_t info)
{
	PyObject *mode = PyObject_GetAttr(state, s_mode), *regs;
	uint64_t cpl;
	int m, lm, la57, sup, u48, u57, i;

	if (!mode)
		return -1;
	m = mode_number(mode);
	Py_DECREF(mode);
	if (m < 0) {
		PyErr_SetString(PyExc_ValueError, "unknown mode");
		return -1;
	}
	if (attr_u64(state, s_cpl, &cpl) < 0)
		return -1;
	if ((la57 = attr_true(state, s_la57)) < 0 || (sup = attr_true(state, s_lam_sup)) < 0 ||
	    (u48 = attr_true(state, s_lam_u48)) < 0 || (u57 = attr_true(state, s_lam_u57)) < 0)
		return -1;
	lm = m == VMXADDR_MODE_64BIT || m == VMXADDR_MODE_COMPATIBILITY;
	st->mode = (uint32_t)m;
	st->cpl = m == VMXADDR_MODE_REAL ? 0 : m == VMXADDR_MODE_VIRTUAL_8086 ? 3 : (uint32_t)cpl;
	st->rflags = m == VMXADDR_MODE_VIRTUAL_8086 ? VMXADDR_RFLAGS_VM : 0;
	st->cr0 = m == VMXADDR_MODE_REAL ? 0 : VMXADDR_CR0_PE | (lm ? VMXADDR_CR0_PG : 0);
	st->cr3 = (u48 ? VMXADDR_CR3_LAM_U48 : 0) | (u57 ? VMXADDR_CR3_LAM_U57 : 0);
	st->cr4 = (la57 ? VMXADDR_CR4_LA57 : 0) | (sup ? VMXADDR_CR4_LAM_SUP : 0) | (lm ? VMXADDR_CR4_PAE : 0);
	st->efer = lm ? VMXADDR_EFER_LME | VMXADDR_EFER_LMA : 0;
	st->seg[VMXADDR_CS].l = m == VMXADDR_MODE_64BIT;

	regs = PyObject_GetAttr(state, s_regs);
	if (!regs)
		return -1;
	if (!PyTuple_Check(regs) || PyTuple_GET_SIZE(regs) != 16) {
		Py_DECREF(regs);
		PyErr_SetString(PyExc_ValueError, "state.regs must be a tuple of 16 integers");
		return -1;
	}
	if (operand_only) {
		if (!(info & (1u << 27)))
			st->gpr[(info >> 23) & 15] = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(regs, (info >> 23) & 15));
		if (!(info & (1u << 22)))
			st->gpr[(info >> 18) & 15] = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(regs, (info >> 18) & 15));
	} else {
		for (i = 0; i < 16; i++)
			st->gpr[i] = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(regs, i));
	}
	Py_DECREF(regs);
	if (PyErr_Occurred())
		return -1;
	if (operand_only) {
		i = (info >> 15) & 7;
		if (i < 6 && fill_segment(state, i, &st->seg[i], m == VMXADDR_MODE_64BIT) < 0)
			return -1;
		return 0;
	}
	if (attr_u64(state, s_rip, &st->rip) < 0)
		return -1;
	for (i = 0; i < 6; i++)
		if (fill_segment(state, i, &st->seg[i], m == VMXADDR_MODE_64BIT) < 0)
			return -1;
	return 0;
}

/* (status, vector, error_code, valid, effective_address, linear_address, segment_base,
 * displacement, segment, reserved), built directly: Py_BuildValue would parse its format per call */
static PyObject *result_tuple(const struct vmxaddr_result *out)
{
	PyObject *t = PyTuple_New(10);
	unsigned long long v[10] = { out->status, out->vector, out->error_code, out->valid, out->effective_address,
	                             out->linear_address, out->segment_base, out->displacement, out->segment,
	                             out->reserved0 };
	int i;

	if (!t)
		return NULL;
	for (i = 0; i < 10; i++) {
		PyObject *x = PyLong_FromUnsignedLongLong(v[i]);
		if (!x) {
			Py_DECREF(t);
			return NULL;
		}
		PyTuple_SET_ITEM(t, i, x);
	}
	return t;
}

static PyObject *marshal_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	struct vmxaddr_exit ex;
	struct vmxaddr_state st;
	struct vmxaddr_access ac;
	struct vmxaddr_result out;
	vmxaddr_adapter fn;
	PyObject *exit, *reason, *acc;
	int operand_only;

	(void)self;
	if (nargs != 5) {
		PyErr_SetString(PyExc_TypeError, "call(fnptr, exit, state, access, operand_only)");
		return NULL;
	}
	fn = (vmxaddr_adapter)PyLong_AsVoidPtr(args[0]);
	exit = args[1];
	acc = args[3];
	operand_only = PyObject_IsTrue(args[4]);
	if (!fn || !PyTuple_Check(exit) || PyTuple_GET_SIZE(exit) < 4 || !PyTuple_Check(acc) || PyTuple_GET_SIZE(acc) < 2) {
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_TypeError, "exit and access must be vmxaddr's ExitInfo and Access");
		return NULL;
	}
	memset(&ex, 0, sizeof(ex));
	memset(&st, 0, sizeof(st));
	memset(&out, 0, sizeof(out));
	reason = PyDict_GetItemWithError(reasons, PyTuple_GET_ITEM(exit, 0));
	if (!reason) {
		if (!PyErr_Occurred())
			PyErr_SetObject(PyExc_KeyError, PyTuple_GET_ITEM(exit, 0));
		return NULL;
	}
	ex.exit_reason = (uint32_t)PyLong_AsUnsignedLongMask(reason);
	ex.instruction_info = (uint32_t)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(exit, 1));
	ex.exit_qualification = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(exit, 2));
	ex.instruction_length = (uint32_t)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(exit, 3));
	ac.size = (uint32_t)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(acc, 0));
	ac.write = PyObject_IsTrue(PyTuple_GET_ITEM(acc, 1)) == 1;
	if (PyErr_Occurred() || fill_state(args[2], &st, operand_only, ex.instruction_info) < 0)
		return NULL;
	fn(&ex, &st, &ac, &out);  /* with the GIL held: adapters are short, and need no thread of their own */
	return result_tuple(&out);
}

/* pack(buffer, offset, exit, state, access, operand_only): the same structures as call() fills,
 * written at `offset` of a writable buffer (the worker's shared memory, vmxaddr.realcode.worker)
 * as struct { exit; state; access; } — the worker calls the adapter on them there. */
static PyObject *marshal_pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	struct record {
		struct vmxaddr_exit exit;
		struct vmxaddr_state state;
		struct vmxaddr_access access;
	} *rec;
	Py_buffer view;
	Py_ssize_t offset;
	PyObject *exit, *reason, *acc;
	int operand_only, ok;

	(void)self;
	if (nargs != 6) {
		PyErr_SetString(PyExc_TypeError, "pack(buffer, offset, exit, state, access, operand_only)");
		return NULL;
	}
	offset = PyLong_AsSsize_t(args[1]);
	if (offset < 0 && PyErr_Occurred())
		return NULL;
	exit = args[2];
	acc = args[4];
	operand_only = PyObject_IsTrue(args[5]);
	if (!PyTuple_Check(exit) || PyTuple_GET_SIZE(exit) < 4 || !PyTuple_Check(acc) || PyTuple_GET_SIZE(acc) < 2) {
		PyErr_SetString(PyExc_TypeError, "exit and access must be vmxaddr's ExitInfo and Access");
		return NULL;
	}
	reason = PyDict_GetItemWithError(reasons, PyTuple_GET_ITEM(exit, 0));
	if (!reason) {
		if (!PyErr_Occurred())
			PyErr_SetObject(PyExc_KeyError, PyTuple_GET_ITEM(exit, 0));
		return NULL;
	}
	if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
		return NULL;
	if (offset < 0 || offset > view.len - (Py_ssize_t)sizeof(*rec)) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_IndexError, "record outside the buffer");
		return NULL;
	}
	rec = (struct record *)((char *)view.buf + offset);
	memset(rec, 0, sizeof(*rec));
	rec->exit.exit_reason = (uint32_t)PyLong_AsUnsignedLongMask(reason);
	rec->exit.instruction_info = (uint32_t)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(exit, 1));
	rec->exit.exit_qualification = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(exit, 2));
	rec->exit.instruction_length = (uint32_t)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(exit, 3));
	rec->access.size = (uint32_t)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(acc, 0));
	rec->access.write = PyObject_IsTrue(PyTuple_GET_ITEM(acc, 1)) == 1;
	ok = !PyErr_Occurred() && fill_state(args[3], &rec->state, operand_only, rec->exit.instruction_info) == 0;
	PyBuffer_Release(&view);
	if (!ok)
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *marshal_init(PyObject *self, PyObject *arg)
{
	(void)self;
	if (!PyDict_Check(arg)) {
		PyErr_SetString(PyExc_TypeError, "init(dict of exit reasons)");
		return NULL;
	}
	Py_XDECREF(reasons);
	Py_INCREF(arg);
	reasons = arg;
	Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
	{ "call", (PyCFunction)(void (*)(void))marshal_call, METH_FASTCALL, "call an adapter on one case" },
	{ "pack", (PyCFunction)(void (*)(void))marshal_pack, METH_FASTCALL, "pack one case into a buffer" },
	{ "init", marshal_init, METH_O, "set the exit reasons" },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = { PyModuleDef_HEAD_INIT, "_vmxaddr_marshal", NULL, -1, methods,
                                     NULL, NULL, NULL, NULL };

PyMODINIT_FUNC PyInit__vmxaddr_marshal(void)
{
	static const char *segs[6] = { "es", "cs", "ss", "ds", "fs", "gs" };
	int i;

	s_regs = PyUnicode_InternFromString("regs");
	s_rip = PyUnicode_InternFromString("rip");
	s_mode = PyUnicode_InternFromString("mode");
	s_cpl = PyUnicode_InternFromString("cpl");
	s_la57 = PyUnicode_InternFromString("la57");
	s_lam_sup = PyUnicode_InternFromString("lam_sup");
	s_lam_u48 = PyUnicode_InternFromString("lam_u48");
	s_lam_u57 = PyUnicode_InternFromString("lam_u57");
	for (i = 0; i < 6; i++)
		s_seg[i] = PyUnicode_InternFromString(segs[i]);
	s_base = PyUnicode_InternFromString("base");
	s_limit = PyUnicode_InternFromString("limit");
	s_selector = PyUnicode_InternFromString("selector");
	s_type = PyUnicode_InternFromString("type");
	s_s = PyUnicode_InternFromString("s");
	s_dpl = PyUnicode_InternFromString("dpl");
	s_p = PyUnicode_InternFromString("p");
	s_db = PyUnicode_InternFromString("db");
	s_g = PyUnicode_InternFromString("g");
	s_l = PyUnicode_InternFromString("l");
	s_unusable = PyUnicode_InternFromString("unusable");
	return PyModule_Create(&module);
}
