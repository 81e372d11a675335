"""The POWER (pseries, SPAPR TCE IOMMU) guest test bed: ``python -m vm power run -- CMD...``.

See vm/power/runner.py for the run protocol, vm/power/pins.py for the pinned inputs and
vm/power/fetch.py for how they are fetched (tools/setup.d/30-power.sh calls ``setup``; the
command line is vm/cli.py, ``python -m vm.power`` being an alias of ``python -m vm power``).
"""

from .runner import (EXIT_FAILURE, EXIT_TIMEOUT, VARIANT, GuestResult, GuestUnavailable, PowerRun,
                     qemu_command, run, unavailable_reason)

__all__ = ["EXIT_FAILURE", "EXIT_TIMEOUT", "VARIANT", "GuestResult", "GuestUnavailable",
           "PowerRun", "qemu_command", "run", "unavailable_reason"]
