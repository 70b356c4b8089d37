import sys

from cnmt.cli import main

sys.exit(main())
