"""Start-up without the cyclic garbage collector, then everything it made frozen out of its way.

Importing the SDK and this server builds some 140,000 long-lived objects (pydantic's classes and
schemas above all). With the collector on, each allocation burst runs a collection over them,
and those collections are about a tenth of the time from spawn to ``initialize`` answered, for
almost no garbage (some 2,500 objects). So the command line pauses collection first thing
(``pause``), and the server's lifespan ``settle``s once it is built: what exists then is frozen
(``gc.freeze``: never scanned again, which also spares later calls full collections of it) and
collection resumes. Only a pause this module made is undone: a program that turned the collector
off itself keeps it off.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Turn cyclic collection off until ``settle``; a no-op when it is off already."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def settle() -> None:
    """Freeze every object made so far, and resume collection if ``pause`` turned it off."""
    global _paused
    gc.freeze()
    if _paused:
        _paused = False
        gc.enable()
