"""python -m dsv3.verify ...: see dsv3.verify."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
