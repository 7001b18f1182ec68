"""``python -m multivae.cli``: the ``multivae`` command."""

import sys

from multivae.cli import main

if __name__ == "__main__":
    sys.exit(main())
