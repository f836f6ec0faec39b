import sys

from vmpod.cli import main

sys.exit(main())
