/*
 * hostile.c — adapters that misbehave, for tests/test_realcode_isolation.py. Each answers like a
 * (wrong) hypervisor that returns the exit qualification as the linear address, except on the
 * cases with a 32-bit address size (instruction-information bits 9:7 = 1), where it does the
 * thing it is named after. vmxaddr runs them in a worker process: each must become a finding.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "vmxaddr.h"

static int triggered(const struct vmxaddr_exit *exit)
{
	return ((exit->instruction_info >> 7) & 7) == 1;
}

static int plain(const struct vmxaddr_exit *exit, struct vmxaddr_result *out)
{
	out->status = VMXADDR_OK;
	out->linear_address = exit->exit_qualification;
	out->valid = VMXADDR_HAVE_LINEAR_ADDRESS;
	return 0;
}

#define ADAPTER(name) \
	int name(const struct vmxaddr_exit *ex, const struct vmxaddr_state *state, \
	         const struct vmxaddr_access *access, struct vmxaddr_result *out)

ADAPTER(h_segv)
{
	(void)state; (void)access;
	if (triggered(ex))
		*(volatile int *)(uintptr_t)8 = 1;
	return plain(ex, out);
}

ADAPTER(h_abort)
{
	(void)state; (void)access;
	if (triggered(ex))
		abort();
	return plain(ex, out);
}

static volatile unsigned long depth;

static unsigned long deeper(unsigned long n)
{
	volatile char frame[256];
	frame[n & 255] = (char)n;
	depth = n;
	return deeper(n + 1) + frame[(n + 1) & 255];
}

ADAPTER(h_stack)
{
	(void)state; (void)access;
	if (triggered(ex))
		out->displacement = deeper(0);
	return plain(ex, out);
}

ADAPTER(h_kill)
{
	(void)state; (void)access;
	if (triggered(ex))
		raise(SIGKILL);
	return plain(ex, out);
}

ADAPTER(h_exit0)
{
	(void)state; (void)access;
	if (triggered(ex))
		exit(0);
	return plain(ex, out);
}

static void mark(void)
{
	const char *name = getenv("HOSTILE_MARK");
	FILE *f = name ? fopen(name, "w") : NULL;
	if (f)
		fclose(f);
}

/* (creates the file named by $HOSTILE_MARK before it loops: the ^C tests wait for it) */
ADAPTER(h_loop)
{
	(void)state; (void)access;
	if (triggered(ex)) {
		mark();
		for (;;)
			depth++;
	}
	return plain(ex, out);
}

ADAPTER(h_print)
{
	(void)state; (void)access;
	printf("{\"type\": \"summary\", \"from\": \"HOSTILE-PRINT\"}\n");
	fflush(stdout);
	fprintf(stderr, "HOSTILE-PRINT on stderr\n");
	return plain(ex, out);
}

ADAPTER(h_close1)
{
	(void)state; (void)access;
	close(1);
	close(2);
	return plain(ex, out);
}

ADAPTER(h_status77)
{
	(void)state; (void)access;
	plain(ex, out);
	if (triggered(ex))
		out->status = 77;
	return 0;
}

ADAPTER(h_vector200)
{
	(void)state; (void)access;
	if (!triggered(ex))
		return plain(ex, out);
	out->status = VMXADDR_FAULT;
	out->vector = 200;
	return 0;
}

/* Loops for ever from its 2001st call on, after creating the file named by $HOSTILE_MARK (the
 * ^C test waits for it): by then the run has found classes. */
ADAPTER(h_late_loop)
{
	static unsigned long calls;
	(void)state; (void)access;
	if (++calls > 2000) {
		mark();
		for (;;)
			depth++;
	}
	return plain(ex, out);
}
