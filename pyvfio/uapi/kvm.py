"""CFFI declarations of linux/kvm.h (memory and device part) and the x86 register structs.

``struct kvm_run`` declares the fixed head, the exit union parts pyvfio reads (io, mmio, hlt
needs none, internal error, system event, memory fault...) next to the kernel's own
``char padding[256]`` member, which keeps the union at its ABI size, and the ``s`` union as its
``char padding[2048]``. ``kvm_regs``/``kvm_sregs`` (and their ``kvm_segment``/``kvm_dtable``)
are x86-only: they are listed in ``ARCH_ONLY`` so the layout probe skips them, by name, on
other architectures. Checked by tests/uapi/test_layout.py.
"""

#: struct (kernel name, with "struct ") -> the only architecture whose layout it declares.
ARCH_ONLY: dict[str, str] = {
    "struct kvm_regs": "x86_64",
    "struct kvm_segment": "x86_64",
    "struct kvm_dtable": "x86_64",
    "struct kvm_sregs": "x86_64",
}

CDEF = """
/* memslots */
struct kvm_userspace_memory_region {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
};

struct kvm_userspace_memory_region2 {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
    __u64 guest_memfd_offset;
    __u32 guest_memfd;
    __u32 pad1;
    __u64 pad2[14];
};

/* dirty logging */
struct kvm_dirty_log {
    __u32 slot;
    __u32 padding1;
    union {
        void *dirty_bitmap;
        __u64 padding2;
    };
};

struct kvm_clear_dirty_log {
    __u32 slot;
    __u32 num_pages;
    __u64 first_page;
    union {
        void *dirty_bitmap;
        __u64 padding2;
    };
};

struct kvm_dirty_gfn {
    __u32 flags;
    __u32 slot;
    __u64 offset;
};

/* capabilities */
struct kvm_enable_cap {
    __u32 cap;
    __u32 flags;
    __u64 args[4];
    __u8 pad[64];
};

/* eventfds */
struct kvm_ioeventfd {
    __u64 datamatch;
    __u64 addr;
    __u32 len;
    __s32 fd;
    __u32 flags;
    __u8 pad[36];
};

struct kvm_irqfd {
    __u32 fd;
    __u32 gsi;
    __u32 flags;
    __u32 resamplefd;
    __u8 pad[16];
};

/* devices */
struct kvm_create_device {
    __u32 type;
    __u32 fd;
    __u32 flags;
};

struct kvm_device_attr {
    __u32 flags;
    __u32 group;
    __u64 attr;
    __u64 addr;
};

struct kvm_vfio_spapr_tce {
    __s32 groupfd;
    __s32 tablefd;
};

/* guest memfd and memory attributes */
struct kvm_memory_attributes {
    __u64 address;
    __u64 size;
    __u64 attributes;
    __u64 flags;
};

struct kvm_create_guest_memfd {
    __u64 size;
    __u64 flags;
    __u64 reserved[6];
};

/* the vCPU's shared run page (mmap of the vCPU fd) */
struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u8 padding1[6];
    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;
    __u64 cr8;
    __u64 apic_base;
    union {
        struct {
            __u64 hardware_exit_reason;
        } hw;
        struct {
            __u64 hardware_entry_failure_reason;
            __u32 cpu;
        } fail_entry;
        struct {
            __u32 exception;
            __u32 error_code;
        } ex;
        struct {
            __u8 direction;
            __u8 size;
            __u16 port;
            __u32 count;
            __u64 data_offset;
        } io;
        struct {
            __u64 phys_addr;
            __u8 data[8];
            __u32 len;
            __u8 is_write;
        } mmio;
        struct {
            __u64 nr;
            __u64 args[6];
            __u64 ret;
            union {
                __u32 longmode;
                __u64 flags;
            };
        } hypercall;
        struct {
            __u64 rip;
            __u32 is_write;
            __u32 pad;
        } tpr_access;
        struct {
            __u32 suberror;
            __u32 ndata;
            __u64 data[16];
        } internal;
        struct {
            __u64 nr;
            __u64 ret;
            __u64 args[9];
        } papr_hcall;
        struct {
            __u32 type;
            __u32 ndata;
            union {
                __u64 flags;
                __u64 data[16];
            };
        } system_event;
        struct {
            __u32 flags;
        } notify;
        struct {
            __u64 flags;
            __u64 gpa;
            __u64 size;
        } memory_fault;
        char padding[256];
    };
    __u64 kvm_valid_regs;
    __u64 kvm_dirty_regs;
    union {
        char padding[2048];
    } s;
};
"""

#: x86 register structs (KVM_GET_REGS/KVM_SET_REGS, KVM_GET_SREGS/KVM_SET_SREGS).
X86_CDEF = """
struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
};

struct kvm_segment {
    __u64 base;
    __u32 limit;
    __u16 selector;
    __u8 type;
    __u8 present, dpl, db, s, l, g, avl;
    __u8 unusable;
    __u8 padding;
};

struct kvm_dtable {
    __u64 base;
    __u16 limit;
    __u16 padding[3];
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    __u64 interrupt_bitmap[4];
};
"""

CDEF += X86_CDEF
