"""Types, rules and settings: no I/O beyond reading the environment. Everything else builds on it."""
