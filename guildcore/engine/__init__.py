"""The engine: supervisor, agents, queue, scaling and the public executors."""
