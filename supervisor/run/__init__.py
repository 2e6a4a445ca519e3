"""The research loop: turns, trials, journal and reflection gates, the tools the agent calls, status."""
