"""How adamtune ends a trial early: the exceptions :meth:`TrialContext.report` raises.

:class:`StopTrial` and its two kinds, :class:`TrialPruned` and :class:`TrialDiverged`, are public
(``adamtune.StopTrial``, ...): a user's ``fit(trial)`` lets them propagate (see ``context.py``). This
module imports nothing.
"""

from __future__ import annotations


class StopTrial(Exception):
    """Raised by ``TrialContext.report`` when adamtune ends the trial. Let it propagate out of ``fit``."""


class TrialPruned(StopTrial):
    """The pruner stopped the trial: its curve so far is not promising."""


class TrialDiverged(StopTrial):
    """A reported metric was non-finite or the loss blew up.

    The rule is described on [TrialContext][adamtune.training.context.TrialContext].
    """
