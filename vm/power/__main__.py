"""python -m vm.power ARGS: the same as ``python -m vm power ARGS`` (vm/cli.py)."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["power", *sys.argv[1:]]))
