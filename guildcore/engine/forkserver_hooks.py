"""Imported by the forkserver only (``pool.FORKSERVER_PRELOAD``): lazy script loading.

Importing this module installs ``lazymain``'s hooks into the forkserver's
``multiprocessing.spawn``, so that its agents run the caller's script only
when a task needs a name from it. The caller never imports this module:
guildcore changes nothing of the caller's ``multiprocessing``.
"""

from guildcore.engine import lazymain

lazymain.install_hooks()
