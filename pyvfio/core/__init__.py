"""The shared core below the kernel objects: fd ownership and what several kernel objects use.

It imports only the seam, the uAPI layer, ``errors`` and ``util``; the kernel objects
(:mod:`pyvfio.vfio`, :mod:`pyvfio.iommufd`, :mod:`pyvfio.kvm`) build on it.
"""
