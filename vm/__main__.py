"""python -m vm: the guest test bed's command line (vm/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
