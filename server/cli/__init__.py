"""The ``key4u-mcp`` command line: serving (stdio or HTTP), ``demo``, ``doctor`` and ``config``.

``main`` parses arguments and imports a subcommand's module only when that subcommand runs, so
serving over stdio never loads the demo, the doctor or the stand-in.
"""
