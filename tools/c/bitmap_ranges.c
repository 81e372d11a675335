/* C baseline for tools/bench_bitmap_ranges.py: memcpy bandwidth and a C ranges scan of the
 * same kernel-format bitmap (u64 little-endian words, bit i = page i).
 *
 *   bitmap_ranges FILE REPEATS  -> "memcpy_ns <best>", "ranges_ns <best>", "nranges <n>",
 *                                  "checksum <sum of starts + lengths, mod 2^50>"
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	FILE *f = fopen(argv[1], "rb");
	if (!f) {
		perror(argv[1]);
		return 1;
	}
	int repeats = atoi(argv[2]);
	fseek(f, 0, SEEK_END);
	size_t n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint64_t *src = aligned_alloc(4096, n), *dst = aligned_alloc(4096, n);
	if (fread(src, 1, n, f) != n)
		return 1;
	memset(dst, 1, n);
	size_t nwords = n / 8, cap = 1 << 20, nr = 0;
	int64_t *starts = malloc(cap * 8), *lens = malloc(cap * 8);
	double best_m = 1e30, best_r = 1e30;
	uint64_t checksum = 0;
	for (int r = 0; r < repeats; r++) {
		double t0 = now_ns();
		memcpy(dst, src, n);
		double t1 = now_ns();
		__asm__ volatile("" ::: "memory");
		nr = 0;
		int64_t run_start = -1;
		for (size_t w = 0; w < nwords; w++) {
			uint64_t x = src[w];
			if (x == 0) {
				if (run_start >= 0) {
					if (nr == cap) {
						cap *= 2;
						starts = realloc(starts, cap * 8);
						lens = realloc(lens, cap * 8);
					}
					starts[nr] = run_start;
					lens[nr++] = (int64_t)w * 64 - run_start;
					run_start = -1;
				}
				continue;
			}
			if (x == ~0ULL) {
				if (run_start < 0)
					run_start = (int64_t)w * 64;
				continue;
			}
			for (int b = 0; b < 64; b++) {
				int bit = (x >> b) & 1;
				if (bit && run_start < 0)
					run_start = (int64_t)w * 64 + b;
				else if (!bit && run_start >= 0) {
					if (nr == cap) {
						cap *= 2;
						starts = realloc(starts, cap * 8);
						lens = realloc(lens, cap * 8);
					}
					starts[nr] = run_start;
					lens[nr++] = (int64_t)w * 64 + b - run_start;
					run_start = -1;
				}
			}
		}
		if (run_start >= 0) {
			starts[nr] = run_start;
			lens[nr++] = (int64_t)nwords * 64 - run_start;
		}
		double t2 = now_ns();
		if (t1 - t0 < best_m) best_m = t1 - t0;
		if (t2 - t1 < best_r) best_r = t2 - t1;
	}
	for (size_t i = 0; i < nr; i++)
		checksum += starts[i] + lens[i];
	if (memcmp(dst, src, n))
		return 1;
	printf("memcpy_ns %.0f\nranges_ns %.0f\nnranges %zu\nchecksum %llu\n", best_m, best_r, nr,
	       (unsigned long long)(checksum & ((1ULL << 50) - 1)));
	return 0;
}
