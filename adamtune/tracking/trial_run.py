"""The MLflow run of one trial (a child of the study's parent run): buffered metrics, batched calls, its end.

Part of the MLflow boundary. Contract: a :class:`TrialRun` is made by :meth:`Tracker.start_trial
<adamtune.tracking.Tracker.start_trial>`, and none of its methods blocks on the store or raises; they
hand calls to the tracker's writer (``tracking/writer.py``).

Cost. Per-epoch metrics are buffered in memory. A trial costs three calls whatever its epochs:
``create_run`` (with its tags, queued by the tracker), one ``log_batch`` with its params, metrics,
final metrics and end tags when it ends (a long trial also sends its buffer every ``flush_seconds``, so
the UI shows live curves, params from the first), and ``set_terminated``. Measured cost:
``bench/tracking.py``.

The run id. ``create_run`` needs the store, so a trial that starts while the store is down (or a short
trial that ends before the store is open) gets its run only when the writer gets through. If that
happens after the trial ended, :meth:`TrialRun.when_created` lets the objective store the
``mlflow.run_id`` attribute then (``mlflow_run.link_run_late``); the run also carries ``adamtune.study``
and ``adamtune.trial_number``, so the run of trial *n* is found with the filter
``tags."adamtune.trial_number" = 'n'`` in the study's experiment, and the trial of a run from its tags.

Creating a run happens once, however often the writer tries (:class:`RunMaker`). A store that goes down
while it answers ``create_run`` (a server killed, a connection reset, a timeout) may have made the run
all the same; the writer then tries the call again, which would make a second run of the same trial. So
each run carries a key of its own, the tag ``adamtune.run_key`` (a random id chosen before the first
try), and a try after a failed one first looks the run up by that key and reuses it if the store made
it. MLflow has no client-chosen run id to make ``create_run`` itself idempotent. The look-up costs one
more call, only on a retry.

MLflow is never imported here: the training thread keeps metrics, params and tags as plain tuples
``(key, value, timestamp, step)`` / ``(key, value)``; the call that sends them wraps them in the light
entities of ``tracking/client.py``, which the tracker's client turns into MLflow's on its writer thread.
So trial 0 trains while MLflow is still being imported.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from adamtune.tracking.client import Metric, Param, RunTag
from adamtune.tracking.writer import RunHandle, _now_ms

if TYPE_CHECKING:
    import optuna

    from adamtune.tracking.tracker import Tracker

#: MLflow's limits for one log_batch call: entries in all, params, tags.
BATCH_LIMIT = 1000
PARAM_LIMIT = 100
TAG_LIMIT = 100
#: MLflow run status for each adamtune trial outcome.
RUN_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}
#: How long a trial waits at its end for its run id while the store is healthy (seconds).
RUN_ID_WAIT_SECONDS = 5.0
#: The tag holding the key a run is made with, by which a retried creation finds it (see the module doc).
RUN_KEY_TAG = "adamtune.run_key"


class RunMaker:
    """Creates one MLflow run at most once, however often the call that creates it is tried.

    Make one per run, before its first try, and call :meth:`create` from every try (on the writer's
    thread): a try after one that failed looks the run up by its key first (see the module doc).
    """

    def __init__(self) -> None:
        self.key = uuid.uuid4().hex
        self.tried = False

    def create(self, client: Any, experiment_id: str | None, tags: Mapping[str, str], **options: Any) -> Any:
        """The run (MLflow's ``Run``): made with ``tags`` plus its key, or the one an earlier try made."""
        if self.tried:
            query = f"tags.`{RUN_KEY_TAG}` = '{self.key}'"
            found = client.search_runs([experiment_id], filter_string=query, max_results=1)
            if found:
                return found[0]
        self.tried = True
        return client.create_run(experiment_id, tags={**tags, RUN_KEY_TAG: self.key}, **options)


class TrialRun:
    """The MLflow run of one trial. Create it with :meth:`Tracker.start_trial`; methods never raise."""

    def __init__(
        self, tracker: Tracker, handle: RunHandle, flush_seconds: float, params: list[tuple[str, str]] | None = None
    ) -> None:
        self.tracker = tracker
        self.handle = handle
        self.flush_seconds = flush_seconds
        self._params: list[tuple[str, str]] = list(params or [])  # sent with the first batch
        self._pending: list[tuple[str, float, int, int]] = []
        self._last_flush = time.monotonic()
        self._noted = False

    @property
    def run_id(self) -> str | None:
        """The run's id once the writer has created it, else None (never blocks)."""
        return self.handle.run_id

    @property
    def noted(self) -> bool:
        """Whether :meth:`take_new_run_id` has handed out the run id."""
        return self._noted

    def take_new_run_id(self) -> str | None:
        """The run id the first time it is known and asked for, else None (to store it exactly once)."""
        if self._noted or self.handle.run_id is None:
            return None
        self._noted = True
        return self.handle.run_id

    def when_created(self, action: Callable[[str], None]) -> None:
        """Call ``action(run_id)`` on the writer's thread once the run exists (never, if it never does)."""

        def call(_client: Any, run_id: str | None) -> None:
            if run_id is not None:
                action(run_id)

        self.tracker.submit("link the run to its trial", call, self.handle)

    def wait_for_run_id(self, timeout: float = RUN_ID_WAIT_SECONDS) -> str | None:
        """The run id, waiting up to ``timeout`` seconds for it only while the store is reachable."""
        deadline = time.monotonic() + timeout
        while not self.handle.created.is_set() and self.tracker.writer.healthy and time.monotonic() < deadline:
            self.handle.created.wait(0.05)
        return self.handle.run_id

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Buffer one epoch's metrics (step = epoch); hand them to the writer if ``flush_seconds`` have passed.

        Non-finite values are logged as they are (MLflow stores NaN/inf), so a diverged curve shows.
        """
        stamp = _now_ms()
        self._pending.extend((name, float(value), stamp, epoch) for name, value in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self, tags: list[tuple[str, str]] | None = None) -> None:
        """Queue the buffered metrics, with the params not sent yet and ``tags``, in as few ``log_batch``
        calls as MLflow allows (at most 1000 entries a call, 100 of them params and 100 tags)."""
        self._last_flush = time.monotonic()
        pending, self._pending = self._pending, []
        params, self._params = self._params, []
        extra_tags = list(tags or [])
        while pending or params or extra_tags:
            head_params, params = params[:PARAM_LIMIT], params[PARAM_LIMIT:]
            head_tags, extra_tags = extra_tags[:TAG_LIMIT], extra_tags[TAG_LIMIT:]
            room = BATCH_LIMIT - len(head_params) - len(head_tags)
            chunk, pending = pending[:room], pending[room:]

            def send(
                client: Any,
                run_id: str | None,
                m: list[Any] = chunk,
                p: list[Any] = head_params,
                t: list[Any] = head_tags,
            ) -> None:
                metrics, params, tags = [Metric(*x) for x in m], [Param(*x) for x in p], [RunTag(*x) for x in t]
                client.log_batch(run_id, metrics=metrics, params=params, tags=tags)

            self.tracker.submit("log metrics", send, self.handle)

    def finish(
        self,
        state: str,
        final_metrics: Mapping[str, float | None],
        tags: Mapping[str, Any],
        *,
        study: optuna.Study | None = None,
        trial_number: int | None = None,
        value: float | None = None,
    ) -> None:
        """Queue the last metrics, ``final_*`` metrics, tags, and the run's end with the status of ``state``.

        With ``study`` and ``trial_number``, the study's parent run also gets its per-trial metrics
        (best so far, counts), computed by the writer from the study with this trial taken as ``state``.
        """
        stamp = _now_ms()
        self._pending.extend(
            (f"final_{name}", float(v), stamp, 0) for name, v in final_metrics.items() if v is not None
        )
        if value is not None:
            self._pending.append(("objective_value", float(value), stamp, 0))
        self.flush(tags=[(k, str(v)) for k, v in {**tags, "adamtune.state": state}.items()])
        status = RUN_STATUS.get(state, "KILLED")

        def end(client: Any, run_id: str | None) -> None:
            self.tracker.stop_system_metrics(self.handle)
            client.set_terminated(run_id, status=status, end_time=stamp)

        self.tracker.submit("end run", end, self.handle)
        if study is not None and trial_number is not None:
            self.tracker.record_trial(study, trial_number, state, value)
