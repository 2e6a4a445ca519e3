"""The `autoresearch` command: argument parsing, headless output, doctor, and launching the UI."""
