"""Backends: where a Guild's tasks run when not on guildcore's own agents.

``parallelization.backend`` picks one: ``local`` is the supervisor and its
agents (``guildcore.engine``); ``dask`` and ``dask-local`` run the same tasks
on a Dask cluster (``backends.dask``). A backend receives the ``Task``
records a ``Guild`` builds and ends each one as the supervisor would, so the
Guild's API, futures, errors, cache and context are the same on every
backend.

This package sits above the engine (it imports the engine, never the other
way): the engine finds a backend by module name, and nothing here is
imported until a Guild asks for it.
"""
