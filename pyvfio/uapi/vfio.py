"""CFFI declarations of linux/vfio.h (6.12 uAPI): every struct the VFIO requests use.

Every field is declared, in the kernel's order, with the kernel's names (anonymous unions
included), so ``ffi.sizeof``/``ffi.offsetof`` match the C compiler. ``__aligned_u64`` is
declared in libc.CDEF; on the LP64 targets pyvfio supports it is plain ``uint64_t``.
Checked against real headers (6.1 installed, 6.12 pinned, ppc64le cross) by
tests/uapi/test_layout.py.
"""

CDEF = """
/* capability chain header shared by device, region and IOMMU info */
struct vfio_info_cap_header {
    __u16 id;
    __u16 version;
    __u32 next;
};

struct vfio_group_status {
    __u32 argsz;
    __u32 flags;
};

struct vfio_device_info {
    __u32 argsz;
    __u32 flags;
    __u32 num_regions;
    __u32 num_irqs;
    __u32 cap_offset;
    __u32 pad;
};

struct vfio_device_info_cap_pci_atomic_comp {
    struct vfio_info_cap_header header;
    __u32 flags;
    __u32 reserved;
};

struct vfio_region_info {
    __u32 argsz;
    __u32 flags;
    __u32 index;
    __u32 cap_offset;
    __aligned_u64 size;
    __aligned_u64 offset;
};

struct vfio_region_sparse_mmap_area {
    __aligned_u64 offset;
    __aligned_u64 size;
};

struct vfio_region_info_cap_sparse_mmap {
    struct vfio_info_cap_header header;
    __u32 nr_areas;
    __u32 reserved;
    struct vfio_region_sparse_mmap_area areas[];
};

struct vfio_region_info_cap_type {
    struct vfio_info_cap_header header;
    __u32 type;
    __u32 subtype;
};

struct vfio_region_gfx_edid {
    __u32 edid_offset;
    __u32 edid_max_size;
    __u32 edid_size;
    __u32 max_xres;
    __u32 max_yres;
    __u32 link_state;
};

struct vfio_device_migration_info {
    __u32 device_state;
    __u32 reserved;
    __aligned_u64 pending_bytes;
    __aligned_u64 data_offset;
    __aligned_u64 data_size;
};

struct vfio_region_info_cap_nvlink2_ssatgt {
    struct vfio_info_cap_header header;
    __aligned_u64 tgt;
};

struct vfio_region_info_cap_nvlink2_lnkspd {
    struct vfio_info_cap_header header;
    __u32 link_speed;
    __u32 __pad;
};

struct vfio_irq_info {
    __u32 argsz;
    __u32 flags;
    __u32 index;
    __u32 count;
};

struct vfio_irq_set {
    __u32 argsz;
    __u32 flags;
    __u32 index;
    __u32 start;
    __u32 count;
    __u8 data[];
};

struct vfio_pci_dependent_device {
    union {
        __u32 group_id;
        __u32 devid;
    };
    __u16 segment;
    __u8 bus;
    __u8 devfn;
};

struct vfio_pci_hot_reset_info {
    __u32 argsz;
    __u32 flags;
    __u32 count;
    struct vfio_pci_dependent_device devices[];
};

struct vfio_pci_hot_reset {
    __u32 argsz;
    __u32 flags;
    __u32 count;
    __s32 group_fds[];
};

struct vfio_device_gfx_plane_info {
    __u32 argsz;
    __u32 flags;
    __u32 drm_plane_type;
    __u32 drm_format;
    __aligned_u64 drm_format_mod;
    __u32 width;
    __u32 height;
    __u32 stride;
    __u32 size;
    __u32 x_pos;
    __u32 y_pos;
    __u32 x_hot;
    __u32 y_hot;
    union {
        __u32 region_index;
        __u32 dmabuf_id;
    };
    __u32 reserved;
};

struct vfio_device_ioeventfd {
    __u32 argsz;
    __u32 flags;
    __aligned_u64 offset;
    __aligned_u64 data;
    __s32 fd;
    __u32 reserved;
};

struct vfio_device_feature {
    __u32 argsz;
    __u32 flags;
    __u8 data[];
};

struct vfio_device_bind_iommufd {
    __u32 argsz;
    __u32 flags;
    __s32 iommufd;
    __u32 out_devid;
};

struct vfio_device_attach_iommufd_pt {
    __u32 argsz;
    __u32 flags;
    __u32 pt_id;
};

struct vfio_device_detach_iommufd_pt {
    __u32 argsz;
    __u32 flags;
};

/* VFIO_DEVICE_FEATURE payloads */
struct vfio_device_feature_migration {
    __aligned_u64 flags;
};

struct vfio_device_feature_mig_state {
    __u32 device_state;
    __s32 data_fd;
};

struct vfio_precopy_info {
    __u32 argsz;
    __u32 flags;
    __aligned_u64 initial_bytes;
    __aligned_u64 dirty_bytes;
};

struct vfio_device_low_power_entry_with_wakeup {
    __s32 wakeup_eventfd;
    __u32 reserved;
};

struct vfio_device_feature_dma_logging_control {
    __aligned_u64 page_size;
    __u32 num_ranges;
    __u32 __reserved;
    __aligned_u64 ranges;
};

struct vfio_device_feature_dma_logging_range {
    __aligned_u64 iova;
    __aligned_u64 length;
};

struct vfio_device_feature_dma_logging_report {
    __aligned_u64 iova;
    __aligned_u64 length;
    __aligned_u64 page_size;
    __aligned_u64 bitmap;
};

struct vfio_device_feature_mig_data_size {
    __aligned_u64 stop_copy_length;
};

struct vfio_device_feature_bus_master {
    __u32 op;
};

/* type1 IOMMU */
struct vfio_iommu_type1_info {
    __u32 argsz;
    __u32 flags;
    __aligned_u64 iova_pgsizes;
    __u32 cap_offset;
    __u32 pad;
};

struct vfio_iova_range {
    __u64 start;
    __u64 end;
};

struct vfio_iommu_type1_info_cap_iova_range {
    struct vfio_info_cap_header header;
    __u32 nr_iovas;
    __u32 reserved;
    struct vfio_iova_range iova_ranges[];
};

struct vfio_iommu_type1_info_cap_migration {
    struct vfio_info_cap_header header;
    __u32 flags;
    __u64 pgsize_bitmap;
    __u64 max_dirty_bitmap_size;
};

struct vfio_iommu_type1_info_dma_avail {
    struct vfio_info_cap_header header;
    __u32 avail;
};

struct vfio_iommu_type1_dma_map {
    __u32 argsz;
    __u32 flags;
    __u64 vaddr;
    __u64 iova;
    __u64 size;
};

struct vfio_bitmap {
    __u64 pgsize;
    __u64 size;
    __u64 *data;
};

struct vfio_iommu_type1_dma_unmap {
    __u32 argsz;
    __u32 flags;
    __u64 iova;
    __u64 size;
    __u8 data[];
};

struct vfio_iommu_type1_dirty_bitmap {
    __u32 argsz;
    __u32 flags;
    __u8 data[];
};

struct vfio_iommu_type1_dirty_bitmap_get {
    __u64 iova;
    __u64 size;
    struct vfio_bitmap bitmap;
};

/* sPAPR TCE IOMMU and EEH */
struct vfio_iommu_spapr_tce_ddw_info {
    __u64 pgsizes;
    __u32 max_dynamic_windows_supported;
    __u32 levels;
};

struct vfio_iommu_spapr_tce_info {
    __u32 argsz;
    __u32 flags;
    __u32 dma32_window_start;
    __u32 dma32_window_size;
    struct vfio_iommu_spapr_tce_ddw_info ddw;
};

struct vfio_eeh_pe_err {
    __u32 type;
    __u32 func;
    __u64 addr;
    __u64 mask;
};

struct vfio_eeh_pe_op {
    __u32 argsz;
    __u32 flags;
    __u32 op;
    union {
        struct vfio_eeh_pe_err err;
    };
};

struct vfio_iommu_spapr_register_memory {
    __u32 argsz;
    __u32 flags;
    __u64 vaddr;
    __u64 size;
};

struct vfio_iommu_spapr_tce_create {
    __u32 argsz;
    __u32 flags;
    __u32 page_shift;
    __u32 __resv1;
    __u64 window_size;
    __u32 levels;
    __u32 __resv2;
    __u64 start_addr;
};

struct vfio_iommu_spapr_tce_remove {
    __u32 argsz;
    __u32 flags;
    __u64 start_addr;
};
"""
