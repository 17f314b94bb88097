"""`python -m buildsys` runs the command line."""

import sys

from buildsys.cli import main

sys.exit(main())
