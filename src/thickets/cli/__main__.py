import sys

from thickets.cli.commands import main

sys.exit(main())
