"""C declarations of the kernel's fixed-width types and the libc calls the real seam makes.

Declared for LP64 Linux (x86_64, aarch64, ppc64le), where ``off_t`` is ``long``.
"""

CDEF = """
typedef uint8_t  __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int8_t   __s8;
typedef int16_t  __s16;
typedef int32_t  __s32;
typedef int64_t  __s64;
typedef uint64_t __aligned_u64;

int ioctl(int fd, unsigned long request, ...);
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
int madvise(void *addr, size_t length, int advice);
int mincore(void *addr, size_t length, unsigned char *vec);
int mlock(const void *addr, size_t len);
int munlock(const void *addr, size_t len);
int eventfd(unsigned int initval, int flags);
int memfd_create(const char *name, unsigned int flags);
void *memmove(void *dest, const void *src, size_t n);
void *memset(void *s, int c, size_t n);
"""
