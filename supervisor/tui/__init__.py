"""The terminal UI: a Textual client of a run's ledger. It renders state and sends commands, nothing else.

The loop never runs in here: `autoresearch run` starts it as its own process (see `launcher`), and the app
reads the ledger at a bounded rate (`state.RunWatcher`) and talks back through the ledger's commands table
(`state.RunControl`), the same path `autoresearch control` uses.
"""
