import sys

from clipdash.cli import main

sys.exit(main())
