"""python -m convert.backends names|stamp|show: the registry's view for make (see convert/backends/__init__.py)."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
