"""A quick interpreter exit for the command line: skip the garbage collector's last passes.

Once ``torch``, ``optuna`` and ``mlflow`` (and, after a search, ``torch._dynamo``, matplotlib and plotly)
are imported, the interpreter holds millions of objects, and its shutdown collects them generation by
generation: about 1 to 2 s on a 2-core VM between the last line a command prints and the end of the
process (measured with ``bench/startup.py``). :func:`gc.freeze` moves every object alive at that point
into the collector's permanent generation, which those passes skip.

Nothing else about the exit changes: every ``atexit`` handler still runs (the hook below runs last,
since it is registered first, before any library is imported), buffered files are flushed and closed,
module globals are cleared and objects are freed by reference counting as usual. Only objects kept
alive solely by reference cycles are not collected any more at exit, which CPython never promised to
do anyway (the OS reclaims the memory). Used by the console entry point (``cli.main``) and by the
workers' fork server (first in ``pool.PRELOAD``: importing this module registers the hook), whose exit
would otherwise keep a search's output pipe open for another second after the command ended; never by
the library.
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def freeze_at_exit() -> None:
    """Register :func:`gc.freeze` to run after every other ``atexit`` handler (idempotent)."""
    global _registered
    if not _registered:
        _registered = True
        atexit.register(gc.freeze)


freeze_at_exit()  # on import: the fork server only imports its preload list
