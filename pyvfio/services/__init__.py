"""Services built on the kernel objects: DMA buffers and mapping (dma), IOVA allocation (iova),
device discovery and driver binding, dirty tracking, benchmarks."""
