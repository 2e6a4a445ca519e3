"""`python -m supervisor.cli`: the same as the `autoresearch` command."""

import sys

from supervisor.cli.main import entry

sys.exit(entry())
