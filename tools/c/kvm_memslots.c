/* C baseline for tools/bench_kvm_memslots.py: the same KVM_SET_USER_MEMORY_REGION ioctls.
 *
 *   kvm_memslots N ROUNDS   -> prints "create_ns <per slot>", "delete_ns <per slot>",
 *                              "pair_ns <create+delete of one slot>" (best of ROUNDS)
 * N one-page slots over one anonymous MAP_NORESERVE mapping, slot i at gpa i * 4096.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

static void set_region(int vm, uint32_t slot, uint64_t gpa, uint64_t size, uint64_t hva)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot, .flags = 0, .guest_phys_addr = gpa,
		.memory_size = size, .userspace_addr = hva,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 32764;
	int rounds = argc > 2 ? atoi(argv[2]) : 3;
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	uint8_t *mem = mmap(NULL, (size_t)n * 4096, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	double best_c = 1e30, best_d = 1e30, best_p = 1e30;
	for (int round = 0; round < rounds; round++) {
		int vm = ioctl(kvm, KVM_CREATE_VM, 0);
		if (vm < 0)
			die("KVM_CREATE_VM");
		double t0 = now_ns();
		for (int i = 0; i < n; i++)
			set_region(vm, i, (uint64_t)i * 4096, 4096, (uint64_t)(mem + (size_t)i * 4096));
		double t1 = now_ns();
		for (int i = 0; i < n; i++)
			set_region(vm, i, (uint64_t)i * 4096, 0, (uint64_t)(mem + (size_t)i * 4096));
		double t2 = now_ns();
		int pairs = n < 5000 ? n : 5000;
		for (int i = 0; i < pairs; i++) {
			set_region(vm, 0, 0, 4096, (uint64_t)mem);
			set_region(vm, 0, 0, 0, (uint64_t)mem);
		}
		double t3 = now_ns();
		close(vm);
		if ((t1 - t0) / n < best_c) best_c = (t1 - t0) / n;
		if ((t2 - t1) / n < best_d) best_d = (t2 - t1) / n;
		if ((t3 - t2) / pairs < best_p) best_p = (t3 - t2) / pairs;
	}
	printf("create_ns %.0f\ndelete_ns %.0f\npair_ns %.0f\n", best_c, best_d, best_p);
	return 0;
}
