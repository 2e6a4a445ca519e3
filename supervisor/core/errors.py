"""One base for every error a person (or an agent's settings) can cause and fix.

The CLI prints such an error as one clear line and exits 1; anything else is a bug and shows a traceback.
(A command line that argparse refuses, a bad option value included, is one line too, and exits 2.)
"""


class UserError(Exception):
    """A problem the person can fix; the message says how."""
