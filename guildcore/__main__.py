"""``python -m guildcore`` runs the ``guild`` command."""

from guildcore.cli import main

raise SystemExit(main())
