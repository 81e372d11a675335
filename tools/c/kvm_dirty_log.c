/* C baseline for tools/bench_dirty_log.py: one dirty-log cycle GET + CLEAR + scan on a big slot.
 *
 *   kvm_dirty_log GIB CYCLES DIRTY   -> "cycle_ns <best>", "median_ns <median>", "found <pages>"
 *
 * One memslot of GIB GiB over an anonymous MAP_NORESERVE mapping (only touched pages exist),
 * dirty logging with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2. Before each cycle (untimed) a real-mode
 * vCPU stores to DIRTY pages; the timed cycle is KVM_GET_DIRTY_LOG into a bitmap,
 * KVM_CLEAR_DIRTY_LOG of that bitmap, and a scan collecting the dirty page numbers.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	uint64_t gib = argc > 1 ? strtoull(argv[1], 0, 0) : 16;
	int cycles = argc > 2 ? atoi(argv[2]) : 50;
	int ndirty = argc > 3 ? atoi(argv[3]) : 16;
	uint64_t size = gib << 30, npages = size >> 12;
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, .args = { 1 } };
	if (ioctl(vm, KVM_ENABLE_CAP, &cap) < 0)
		die("KVM_ENABLE_CAP");
	uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	struct kvm_userspace_memory_region r = {
		.slot = 0, .flags = KVM_MEM_LOG_DIRTY_PAGES, .guest_phys_addr = 0,
		.memory_size = size, .userspace_addr = (uint64_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	/* guest: for each page j: mov ax, seg; mov ds, ax; mov byte [off], 0xa5 ; then hlt */
	uint8_t *p = mem + 0x1000;
	for (int j = 0; j < ndirty; j++) {
		uint64_t gpa = 0x10000 + (uint64_t)j * 4096 * 3 + 0x10;
		uint16_t seg = gpa >> 4, off = gpa & 15;
		*p++ = 0xb8; *p++ = seg & 0xff; *p++ = seg >> 8;
		*p++ = 0x8e; *p++ = 0xd8;
		*p++ = 0xc6; *p++ = 0x06; *p++ = off & 0xff; *p++ = off >> 8; *p++ = 0xa5;
	}
	*p++ = 0xf4;
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");
	uint64_t nwords = (npages + 63) / 64;
	uint64_t *bitmap = aligned_alloc(64, nwords * 8);
	int64_t *found = malloc(npages * sizeof(int64_t) > (1 << 20) ? (1 << 20) * 8 : npages * 8);
	double *t = calloc(cycles, sizeof(double));
	int64_t nfound = 0;
	memset(bitmap, 0, nwords * 8);
	for (int c = -1; c < cycles; c++) {
		struct kvm_sregs sregs;
		struct kvm_regs regs = { .rip = 0x1000, .rflags = 2 };
		if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
			die("KVM_GET_SREGS");
		sregs.cs.base = sregs.ds.base = sregs.es.base = sregs.ss.base = 0;
		sregs.cs.selector = sregs.ds.selector = sregs.es.selector = sregs.ss.selector = 0;
		if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0 || ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
			die("KVM_SET_[S]REGS");
		do {
			if (ioctl(vcpu, KVM_RUN, 0) < 0)
				die("KVM_RUN");
		} while (run->exit_reason == KVM_EXIT_IO);
		if (run->exit_reason != KVM_EXIT_HLT) {
			fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
			return 1;
		}
		double t0 = now_ns();
		struct kvm_dirty_log log = { .slot = 0, .dirty_bitmap = bitmap };
		if (ioctl(vm, KVM_GET_DIRTY_LOG, &log) < 0)
			die("KVM_GET_DIRTY_LOG");
		struct kvm_clear_dirty_log clr = { .slot = 0, .num_pages = npages, .first_page = 0,
						   .dirty_bitmap = bitmap };
		if (ioctl(vm, KVM_CLEAR_DIRTY_LOG, &clr) < 0)
			die("KVM_CLEAR_DIRTY_LOG");
		nfound = 0;
		for (uint64_t w = 0; w < nwords; w++) {
			uint64_t bits = bitmap[w];
			while (bits) {
				found[nfound++] = w * 64 + __builtin_ctzll(bits);
				bits &= bits - 1;
			}
		}
		double t1 = now_ns();
		if (c >= 0)
			t[c] = t1 - t0;
	}
	qsort(t, cycles, sizeof(double), cmp);
	printf("cycle_ns %.0f\nmedian_ns %.0f\nfound %ld\n", t[0], t[cycles / 2], (long)nfound);
	return 0;
}
