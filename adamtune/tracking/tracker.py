"""The MLflow boundary: one experiment per study, a parent run per study, one child run per trial.

Only :class:`~mlflow.MlflowClient` with explicit run ids is used, never the fluent "active run", so
trials and threads share no hidden state.

Layout in MLflow
----------------
* Experiment ``adamtune/<study>`` (tag ``adamtune.study``), opened by ``store.py``.
* A **parent run** per study (tag ``adamtune.role=study``), created by the first ``search`` or worker
  that tracks the study and reused by every later one: its id is stored on the Optuna study as the
  user attribute ``mlflow.parent_run_id``, which is how workers that join later find it. If that run
  no longer exists in the tracking store in use (deleted, or another ``--tracking-uri``), a new parent
  is made and the attribute is overwritten. Params: the study definition (task, objective, direction,
  epochs, batch size, one ``space.<dim>`` per dimension), which ``create_or_resume`` keeps fixed; tags:
  the settings that a later search may change (``adamtune.n_trials``, ``adamtune.sampler``,
  ``adamtune.pruner``). Metric histories with step = trial number: ``best_<objective>`` (best complete
  trial so far), ``trial_<objective>`` (that trial's value, complete trials only) and
  ``trials_<state>`` (counts by outcome). When a ``search`` ends: plots and ``recommendation.json``
  as artifacts (see :meth:`Tracker.end_search`).
* A **child run** per trial (tag ``mlflow.parentRunId``, so the UI nests it under the parent): the
  Adam params, ``seed``, ``epochs``, ``batch_size``; per-epoch metrics (step = epoch, from 1);
  ``final_<metric>`` and ``objective_value`` when it ends; tags ``adamtune.study``,
  ``adamtune.trial_number``, ``adamtune.state`` (complete/pruned/diverged/failed),
  ``adamtune.stopped_epoch``, device, host, worker, ``adamtune.run_key`` (made once: ``trial_run.py``);
  with ``system_metrics``, ``system/*`` metrics (``system_metrics.py``). The run id is stored on the
  Optuna trial as ``mlflow.run_id`` whenever it is known before the trial ends (see "Failure").

The parent run's own calls (finding or creating it, its progress metrics, its plots and
``recommendation.json``, the context a search runs in) are in ``parent_run.py``.

Cost
----
The training loop never waits on MLflow: every call goes to one background writer thread per
:class:`Tracker` (``writer.py``). A trial costs three calls whatever its epochs (see
``trial_run.py``). The parent run's progress metrics are coalesced (``progress.py``): one
call per ``PROGRESS_SECONDS`` for all trials that ended meanwhile. Measured cost: ``bench/tracking.py``.

Where MLflow runs: on the tracker's writer thread, through ``MlflowClient`` (``client.py``).
A one-worker search trains in its trainer process, so MLflow never shares the training interpreter.

Failure
-------
A tracking store that is unreachable *during* a search never kills a trial: the writer
(``writer.py``) queues the calls and retries them, telling the user once when the store goes
and once when it is back. :meth:`Tracker.close` waits up to a timeout for the queue to drain and then
reports how many calls were dropped; the Optuna study stays the source of truth either way.

A trial that starts while the store is down gets its run id late, or after the trial ended; its run is
then found by its tags (``trial_run.py``). Runs that dead workers left RUNNING are closed by
``stale.py``.

A store that is unusable when a search *starts* is an error (:class:`TrackingError`, before anything
is written). By default the experiment and the parent run are made synchronously. A ``search`` that
trains in its own process (one worker) passes ``defer_open=True``: the store is checked without MLflow
(``preflight.py``: the SQLite file, the directory, the server's ``/health``), and MLflow's
import, the store's creation and the parent run are the writer's first calls, made while trial 0
already trains (the calls queued meanwhile wait behind them, in order). A store that fails there
anyway is retried if it is a server or a locked file (as during a search); otherwise tracking is given
up with one notice and the search goes on (:attr:`Tracker.disabled`): the study holds every trial.

HTTP stores: a :class:`Tracker` for an ``http(s)://`` URI lowers MLflow's own HTTP retries and timeout
(``store.HTTP_DEFAULTS``), so that an unreachable server is noticed in seconds.
"""

from __future__ import annotations

import atexit
import logging
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from adamtune.core.errors import TrackingError
from adamtune.tracking.parent_run import (
    PARENT_TAG,
    PlotDrawing,
    StudyArtifacts,
    log_progress,
    open_parent_run,
    param_text,
    queue_artifacts,
)
from adamtune.tracking.preflight import check_store, deferrable_uri
from adamtune.tracking.progress import ProgressBuffer
from adamtune.tracking.stale import close_orphan_runs
from adamtune.tracking.store import open_store, use_http_defaults
from adamtune.tracking.system_metrics import start_monitor, stop_monitor
from adamtune.tracking.trial_run import RunMaker, TrialRun
from adamtune.tracking.writer import RunHandle, Writer, _first_line, _now_ms, _Op, describe_error, is_retryable

if TYPE_CHECKING:
    import optuna


log = logging.getLogger(__name__)

#: How long closing a tracker (end of a search or worker, or interpreter exit) waits for queued calls.
CLOSE_TIMEOUT_SECONDS = 30.0


class Tracker:
    """Logs one study to MLflow; ``tracking_uri`` None means MLflow's own default store.

    Args:
        study_name: the Optuna study; its experiment is ``adamtune/<study_name>``.
        tracking_uri: MLflow tracking URI.
        flush_seconds: the longest a trial's metrics stay buffered (live curves for long trials).
        notify: where one-line notices for the user go (default: this module's logger, as warnings).
        system_metrics: record CPU/GPU/memory/disk/network use in each trial's run (``system/*``
            metrics, MLflow's ``SystemMetricsMonitor``; GPU figures need ``nvidia-ml-py``).
        close_timeout: how long :meth:`close` (also run at interpreter exit) waits for queued calls
            (default ``CLOSE_TIMEOUT_SECONDS``).
        max_queue: the most tracking calls kept waiting while the store is down (then new ones are dropped).

    Raises:
        TrackingError: the store cannot be reached or used now (checked by finding or making the
            study's experiment), or the experiment was deleted.
    """

    def __init__(
        self,
        study_name: str,
        tracking_uri: str | None = None,
        *,
        flush_seconds: float = 15.0,
        notify: Callable[[str], None] | None = None,
        system_metrics: bool = False,
        close_timeout: float | None = None,
        max_queue: int = 10_000,
        defer_open: bool = False,
    ) -> None:
        use_http_defaults(tracking_uri)
        self.study_name = study_name
        self.flush_seconds = flush_seconds
        self.notify = notify or (lambda message: log.warning("%s", message))
        self.system_metrics = system_metrics
        self.close_timeout = CLOSE_TIMEOUT_SECONDS if close_timeout is None else close_timeout
        self.host = socket.gethostname()
        #: The study's parent run: resolved by :meth:`attach` (on the writer thread when deferred).
        self.parent = RunHandle("parent")
        self._attached = False
        self._progress = ProgressBuffer()
        self._drawing: PlotDrawing | None = None  # the plots drawn once the trial target was reached
        #: What :meth:`end_search` uploads (the plots, ``recommendation.json``); set by the search
        #: (``adamtune.report.artifacts.ReportArtifacts``). None: the parent run gets no artifacts.
        self.artifacts: StudyArtifacts | None = None
        self.direction = "minimize"
        self.objective = "val_loss"
        self.client: Any = None
        self.experiment_id: str | None = None
        #: Why tracking was given up (a deferred open that failed), else None.
        self.disabled: str | None = None
        uri = deferrable_uri(tracking_uri) if defer_open else None
        self.deferred = uri is not None
        if uri is None:
            try:
                self._open(tracking_uri)
            except TrackingError:
                raise
            except Exception as exc:
                raise TrackingError(
                    f"cannot use MLflow tracking store {tracking_uri or 'default'}: {describe_error(exc)}; "
                    "check --tracking-uri / MLFLOW_TRACKING_URI"
                ) from None
            self.writer = Writer(self.client, self.tracking_uri, self.notify, max_queue=max_queue)
        else:
            check_store(uri)  # TrackingError for what would make the store unusable; writes nothing
            self.tracking_uri = uri
            self.writer = Writer(None, uri, self.notify, max_queue=max_queue)
            self.writer.submit(_Op("open the tracking store", self._open_deferred))
        self._closed = False
        atexit.register(self.close)

    @property
    def parent_run_id(self) -> str | None:
        """The id of the study's parent run once known (see :meth:`attach`), else None."""
        return self.parent.run_id

    def _open(self, tracking_uri: str | None) -> None:
        """Open (create) the store and find or make the study's experiment (``store.open_store``)."""
        client, self.experiment_id = open_store(tracking_uri, self.study_name)
        self.tracking_uri = str(client.tracking_uri)
        self.client = client

    def _open_deferred(self, _client: Any, _run_id: str | None) -> None:
        """The writer's first call when the open is deferred: open (create) the store."""
        if self._or_give_up(lambda: self._open(self.tracking_uri)):
            self.writer.client = self.client

    def _or_give_up(self, action: Callable[[], None]) -> bool:
        """Run a deferred step on the writer thread; True when it worked.

        A failure worth retrying is raised again (the writer retries it, and tells the user once, as for
        any call while the store is down); any other gives tracking up (:meth:`_give_up`).
        """
        try:
            action()
        except Exception as exc:
            if self._worth_retrying(exc):
                raise
            self._give_up(exc)
            return False
        return True

    def _worth_retrying(self, exc: BaseException) -> bool:
        """A deferred open or attach is retried only where the store can come back: a server, a locked file."""
        if isinstance(exc, TrackingError) or not is_retryable(exc):
            return False
        return self.tracking_uri.startswith(("http://", "https://")) or "locked" in str(exc)

    def _give_up(self, exc: BaseException) -> None:
        """Tracking cannot work for this store: say so once, drop every call, and let the search go on."""
        self._stop_tracking(
            f"MLflow: cannot use tracking store {self.tracking_uri}: {describe_error(exc)}; this search goes on "
            "without tracking (the study database keeps every trial); check --tracking-uri / MLFLOW_TRACKING_URI"
        )

    def _stop_tracking(self, notice: str) -> None:
        self.disabled = notice
        self.notify(notice)
        self.parent.resolve(None)
        self.writer.disable()

    # -- queue -----------------------------------------------------------------------------------

    def submit(self, what: str, action: Callable[[Any, str | None], None], run: RunHandle | None = None) -> bool:
        """Queue a tracking call ``action(client, run_id)`` (see :class:`Writer`)."""
        return self.writer.submit(_Op(what, action, run))

    # -- parent run ------------------------------------------------------------------------------

    def attach(self, study: optuna.Study, *, storage_url: str | None = None, reopen: bool = False) -> str | None:
        """Find or create the study's parent run and remember it for the trials that follow.

        Idempotent: once attached, later calls return the same id (``reopen`` still refreshes it).
        The parent is the run named by the study attribute ``mlflow.parent_run_id`` when it exists,
        is not deleted, and belongs to this study's experiment in this store; otherwise a new one is
        created and the attribute is set. ``reopen`` (a ``search`` starting) marks a reused parent
        RUNNING again and refreshes its settings tags.

        Synchronous (the store was just reached) and returns the run id, unless the tracker's open is
        deferred: then the writer does it after opening the store, before any later call, and this
        returns None (the id is on :attr:`parent` once known; a failure gives tracking up, see
        :meth:`_give_up`).

        Raises:
            TrackingError: the store fails (synchronous attach only).
        """
        from adamtune.storage.study import spec_from_study

        if self._attached and not reopen:
            return self.parent_run_id
        spec = spec_from_study(study)
        self.direction, self.objective = spec.direction, spec.objective
        self._attached = True
        if not self.deferred:
            try:
                run_id = open_parent_run(self, study, spec, storage_url, reopen)
            except Exception as exc:
                raise TrackingError(f"cannot open the MLflow parent run of study {study.study_name!r}: {exc}") from None
            self.parent.resolve(run_id)
            return run_id

        maker = RunMaker()  # one parent, however often the writer tries (trial_run.py)

        def open_parent(_client: Any, _run_id: str | None) -> None:
            self._or_give_up(
                lambda: self.parent.resolve(open_parent_run(self, study, spec, storage_url, reopen, maker))
            )

        self.writer.submit(_Op("open the study's parent run", open_parent, on_drop=lambda: self.parent.resolve(None)))
        return None

    def record_trial(self, study: optuna.Study, number: int, state: str, value: float | None) -> None:
        """Note trial ``number`` ending as ``state`` with ``value``, for the parent run's progress metrics.

        Updates are coalesced to save tracking calls on short trials (``progress.py``): one queued call, at
        most every ``PROGRESS_SECONDS``, reads the study once and logs the metrics of every trial noted since
        (each at its own step); :meth:`flush_progress` (run by :meth:`end_search` and :meth:`close`) sends the
        rest. The writer reads the study off the training thread; an Optuna storage error there drops
        those updates only.
        """
        if not self._attached:
            return
        if self._progress.note(study, number, state, value):
            self.flush_progress()

    def flush_progress(self) -> None:
        """Queue one call that logs the parent run's metrics for every trial noted and not yet logged."""
        if not self._attached or not self._progress.start_sending():
            return
        direction, objective = self.direction, self.objective

        def update(client: Any, parent: str | None) -> None:
            log_progress(client, parent, self._progress.take(), direction, objective)

        self.submit("log the study's progress", update, self.parent)

    def begin_artifacts(self, study: optuna.Study) -> None:
        """Start drawing the study's plots on a background thread (the search reached its trial target and
        its trials no longer change); :meth:`end_search` uploads them. Once per search; no-op untracked."""
        if self._attached and not self.parent.abandoned and self._drawing is None and self.artifacts is not None:
            self._drawing = PlotDrawing(self, study)

    def end_search(self, study: optuna.Study, *, status: str = "FINISHED", artifacts: bool = True) -> None:
        """Queue the end of a search: plots and ``recommendation.json`` on the parent run, then its status.

        The plots are those :meth:`begin_artifacts` started (waited for), else drawn now (from the
        study; see :attr:`artifacts`), into a temporary directory that is removed once uploaded or dropped. A
        plot the study cannot support yet is skipped; an error while drawing is reported once and the
        other artifacts still go out. ``artifacts=False`` (an interrupted search) only sets the status.
        """
        drawing, self._drawing = self._drawing, None
        if not self._attached or self.parent.abandoned:
            if drawing is not None:
                drawing.discard()
            return
        self.flush_progress()
        close_orphan_runs(self, study)
        if artifacts:
            queue_artifacts(self, study, drawing)
        elif drawing is not None:
            drawing.discard()
        self.submit(
            "end the study's parent run", lambda c, parent: c.set_terminated(parent, status=status), self.parent
        )

    # -- trials ----------------------------------------------------------------------------------

    def start_trial(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> TrialRun:
        """Queue the creation of a trial's run (nested under the parent run, if any) with ``tags``.

        Returns at once; the run id appears on the returned :class:`TrialRun` when the writer has
        created the run (see the module docstring for a store that is down). ``params`` go out with
        the run's first metrics batch (at its first flush, or when it ends), to save a call.
        """
        handle = RunHandle(run_name)
        run_tags = {"adamtune.host": self.host, "adamtune.role": "trial", **{k: str(v) for k, v in tags.items()}}
        param_list = [(k, param_text(v)) for k, v in params.items()]
        started = _now_ms()  # the run's times are the trial's, even when the writer creates it late
        maker = RunMaker()  # one run, however often the writer tries (a lost answer: trial_run.py)

        def create(client: Any, _: str | None) -> None:
            if self.parent.run_id is not None:  # known by now: the writer runs calls in order
                run_tags[PARENT_TAG] = self.parent.run_id
            run = maker.create(client, self.experiment_id, run_tags, start_time=started, run_name=run_name)
            handle.resolve(run.info.run_id)
            if self.system_metrics:
                self._start_system_metrics(handle)

        op = _Op(f"start run {run_name!r}", create, None, on_drop=lambda: handle.resolve(None))
        self.writer.submit(op)
        return TrialRun(self, handle, self.flush_seconds, param_list)

    def _start_system_metrics(self, handle: RunHandle) -> None:
        try:
            start_monitor(handle, self.tracking_uri)
        except Exception as exc:  # psutil missing, or the monitor cannot start: training goes on
            self.system_metrics = False
            self.notify(f"MLflow: system metrics are off: {_first_line(exc)[:200]}")

    def stop_system_metrics(self, handle: RunHandle) -> None:
        """Stop the run's system-metrics monitor (if any) and send its last samples (``system_metrics.py``)."""
        stop_monitor(handle)

    # -- shutdown --------------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> int:
        """Send every queued call, waiting at most ``timeout`` (default ``close_timeout``) seconds.

        Returns the number of tracking calls dropped over the tracker's life (0 when everything went
        out), and tells the user when that is not 0. Idempotent; also runs at interpreter exit.
        """
        if self._closed:
            return self.writer.dropped
        self.flush_progress()
        self._closed = True
        atexit.unregister(self.close)
        waiting = self.writer.pending
        if waiting and not self.writer.healthy:
            self.notify(f"MLflow: waiting up to {timeout or self.close_timeout:.0f} s to send {waiting} queued calls")
        dropped = self.writer.close(self.close_timeout if timeout is None else timeout)
        if dropped and self.disabled is None:  # a tracker that gave up has said so already
            self.notify(
                f"MLflow: {dropped} tracking call(s) could not be sent to {self.tracking_uri} and were dropped; "
                "the study database holds every trial (adamtune summary)"
            )
        return dropped
