/*
 * worker.c — the process a compiled model runs in (vmxaddr/realcode/worker.py is its supervisor).
 *
 *     vmxaddr-worker LIBRARY FUNCTION SHM_FD REQUEST_FD REPLY_FD LIFELINE_FD
 *
 * The library's code (a user's adapter, a KVM tree, Debian's KVM or Xen) may crash, hang, exit or
 * print: here it can only take this process with it. vmxaddr never loads it.
 *
 * Shared memory (SHM_FD, mapped by both sides), struct vmxaddr_worker_shm below: a header, then
 * BATCH input records (exit, state, access) and BATCH results. One request on REQUEST_FD (op,
 * first, count: three uint32), one byte back on REPLY_FD when it is done:
 *   OP_BATCH    call FUNCTION on records first … first+count-1, each result in its slot; `current`
 *               is the record being run (the supervisor reads it to name the case that crashed or
 *               hung, and to see progress: its time limit is per call)
 *   OP_CALL     call the symbol named in `text` as f(exit, state, access, p0, p1, p2, p3) on record
 *               0, p0…p3 pointing at the zeroed scratch areas; its int return in `ret` (explain)
 *   OP_STRING   copy the C string at address `address` into `text` (a pointer OP_CALL returned)
 *   OP_SYMBOL   copy `address` bytes (at most SCRATCH) at the symbol named in `text` into scratch 0;
 *               `ret` 1 if found
 * At start, before the first reply: the layout, the function and `vmxaddr_mnemonics` looked up
 * (`ready` 1), or dlopen()/dlsym()'s message in `text` (`ready` 2).
 *
 * LIFELINE_FD: a pipe whose other end only vmxaddr holds; a thread waits on it and ends this
 * process when vmxaddr is gone, even while the library's code loops.
 * Written for vmxaddr (MIT).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "vmxaddr.h"

#define BATCH 512
#define SCRATCH 1024
#define TEXT 4096
#define OP_BATCH 1
#define OP_CALL 2
#define OP_STRING 3
#define OP_SYMBOL 4
#define INTERNAL_ERROR 3  /* `ready` when this program (not the library) fails: message in text */

struct vmxaddr_record {
	struct vmxaddr_exit exit;
	struct vmxaddr_state state;
	struct vmxaddr_access access;
};

struct vmxaddr_worker_shm {
	volatile uint32_t current;  /* the record being run (BATCH and past: none) */
	volatile uint32_t ready;
	volatile uint32_t have_layout, have_mnemonics;
	uint32_t layout[VMXADDR_LAYOUT_ENTRIES];
	int32_t ret;
	uint32_t reserved0;
	uint64_t address;
	char text[TEXT];
	unsigned char scratch[4][SCRATCH];
	struct vmxaddr_record in[BATCH];
	struct vmxaddr_result out[BATCH];
};

/* worker.py builds this program with its view of the layout: a difference fails the build */
#ifdef VMXADDR_WORKER_SIZE
_Static_assert(sizeof(struct vmxaddr_worker_shm) == VMXADDR_WORKER_SIZE, "shared memory size");
_Static_assert(offsetof(struct vmxaddr_worker_shm, in) == VMXADDR_WORKER_IN, "records offset");
_Static_assert(offsetof(struct vmxaddr_worker_shm, out) == VMXADDR_WORKER_OUT, "results offset");
_Static_assert(offsetof(struct vmxaddr_worker_shm, text) == VMXADDR_WORKER_TEXT, "text offset");
_Static_assert(sizeof(struct vmxaddr_record) == VMXADDR_WORKER_RECORD, "record size");
#endif

typedef int (*call7)(void *, void *, void *, void *, void *, void *, void *);

static int lifeline;

static void *watch(void *arg)
{
	char c;
	(void)arg;
	while (read(lifeline, &c, 1) != 0)
		;  /* EOF (or an error): vmxaddr is gone */
	_exit(0);
	return NULL;
}

static void reply(int fd, char c)
{
	while (write(fd, &c, 1) != 1)
		;
}

static void internal_error(struct vmxaddr_worker_shm *shm, int fd, const char *what)
{
	snprintf(shm->text, TEXT, "%s", what);
	shm->ready = INTERNAL_ERROR;
	reply(fd, 'E');
	_exit(3);
}

int main(int argc, char **argv)
{
	struct vmxaddr_worker_shm *shm;
	vmxaddr_adapter fn;
	void *lib, *sym;
	int req, rep, shm_fd;
	pthread_t t;
	uint32_t msg[3], i;

	if (argc != 7)
		return 3;
	shm_fd = atoi(argv[3]);
	req = atoi(argv[4]);
	rep = atoi(argv[5]);
	lifeline = atoi(argv[6]);
	shm = mmap(NULL, sizeof(*shm), PROT_READ | PROT_WRITE, MAP_SHARED, shm_fd, 0);
	if (shm == MAP_FAILED)
		return 3;
	{
		struct rlimit none = { 0, 0 };
		setrlimit(RLIMIT_CORE, &none);  /* a crash is a finding, not a core file per case */
	}
	if (pthread_create(&t, NULL, watch, NULL) != 0)
		internal_error(shm, rep, "cannot start the lifeline thread");
	signal(SIGPIPE, SIG_IGN);
	shm->current = BATCH;
	lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		snprintf(shm->text, TEXT, "%s", dlerror());
		shm->ready = 2;
		reply(rep, 'E');
		return 0;
	}
	fn = (vmxaddr_adapter)dlsym(lib, argv[2]);
	if (!fn) {
		snprintf(shm->text, TEXT, "no function %s", argv[2]);
		shm->ready = 2;
		reply(rep, 'E');
		return 0;
	}
	sym = dlsym(lib, "vmxaddr_layout");
	if (sym) {
		memcpy(shm->layout, sym, sizeof(shm->layout));
		shm->have_layout = 1;
	}
	sym = dlsym(lib, "vmxaddr_mnemonics");  /* a `const char name[]`: its bytes are at the symbol */
	if (sym) {
		snprintf(shm->text, TEXT, "%s", (const char *)sym);
		shm->have_mnemonics = 1;
	}
	shm->ready = 1;
	reply(rep, 'R');
	for (;;) {
		ssize_t got = 0, r;
		while (got < (ssize_t)sizeof(msg)) {
			r = read(req, (char *)msg + got, sizeof(msg) - (size_t)got);
			if (r <= 0)
				_exit(0);  /* vmxaddr closed the pipe */
			got += r;
		}
		switch (msg[0]) {
		case OP_BATCH:
			if (msg[1] > BATCH || msg[2] > BATCH - msg[1])
				internal_error(shm, rep, "batch out of range");
			for (i = msg[1]; i < msg[1] + msg[2]; i++) {
				shm->current = i;
				memset(&shm->out[i], 0, sizeof(shm->out[i]));
				fn(&shm->in[i].exit, &shm->in[i].state, &shm->in[i].access, &shm->out[i]);
			}
			shm->current = BATCH;
			break;
		case OP_CALL:
			shm->text[TEXT - 1] = 0;
			sym = dlsym(lib, shm->text);
			memset(shm->scratch, 0, sizeof(shm->scratch));
			shm->current = 0;
			shm->ret = sym ? ((call7)sym)(&shm->in[0].exit, &shm->in[0].state, &shm->in[0].access, shm->scratch[0],
			                              shm->scratch[1], shm->scratch[2], shm->scratch[3]) : -1;
			shm->current = BATCH;
			break;
		case OP_STRING:
			snprintf(shm->text, TEXT, "%s", shm->address ? (const char *)(uintptr_t)shm->address : "");
			break;
		case OP_SYMBOL:
			shm->text[TEXT - 1] = 0;
			sym = dlsym(lib, shm->text);
			shm->ret = sym != NULL;
			memset(shm->scratch[0], 0, SCRATCH);
			if (sym)
				memcpy(shm->scratch[0], sym, shm->address < SCRATCH ? (size_t)shm->address : SCRATCH);
			break;
		default:
			internal_error(shm, rep, "unknown request");
		}
		reply(rep, 'D');
	}
}
