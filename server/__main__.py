"""``python -m server``: the same as the ``key4u-mcp`` command."""

from server.cli.main import main

raise SystemExit(main())
