"""Run the thickets CLI with the test tasks registered (for subprocess tests such as kill -9)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from helpers import register_toy_task
from thickets.cli.commands import main

register_toy_task()
sys.exit(main(sys.argv[1:]))
