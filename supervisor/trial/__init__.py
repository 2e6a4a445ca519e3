"""One trial as a process: the git workspace, the runner, warm start, guards, platform facts."""
