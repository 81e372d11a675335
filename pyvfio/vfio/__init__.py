"""VFIO kernel objects: Container, Group, Device (and their IOMMU backends)."""
