"""Fast checks of the parallel-search plumbing: bad input, device lists, retries, stale-trial re-queueing.

Real components throughout (SQLite files, the PostgreSQL server, click's CliRunner). The only stand-in
is ``torch.cuda.device_count`` in the device-list tests: this machine has no GPU, so a two-GPU machine
is simulated there (and said so in each test).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner, Result

from adamtune.cli.main import cli
from adamtune.core.config import build_spec
from adamtune.core.errors import ConfigError, DeviceError, StorageError
from adamtune.core.signals import Interrupts
from adamtune.core.space import suggest
from adamtune.launch.pool import plan_workers
from adamtune.storage.attr_keys import BASELINE_ATTR, RUN_ID_ATTR
from adamtune.storage.backends import open_storage
from adamtune.storage.db_errors import with_db_retry
from adamtune.storage.stale_trials import RetryStaleTrial, heartbeat_settings
from adamtune.storage.study import create_or_resume, load_study
from adamtune.training.devices import resolve_devices
from adamtune.trials.admission import Admission
from adamtune.trials.worker import Worker, WorkerOptions
from tests.conftest import listing


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def make_study(storage_url: str, n_trials: int = 4) -> optuna.Study:
    spec = build_spec("synthetic", None, None, {"n_trials": n_trials, "epochs": 2}).with_task_defaults(5, 100)
    return create_or_resume(spec, open_storage(storage_url))


# --- bad input: one line, an exit code, nothing written --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["search", "--task", "synthetic", "--workers", "0"], 2, "--workers must be at least 1, got 0"),
        (["search", "--task", "synthetic", "--devices", "cuda:3"], 2, "device 'cuda:3' is not available"),
        (["search", "--task", "synthetic", "--devices", "cpu,,cpu"], 2, "has an empty entry"),
        (["search", "--task", "synthetic", "--devices", "tpu"], 2, "unknown device 'tpu'"),
        (["search", "--task", "synthetic", "--storage", "not a url"], 3, "is not a database URL"),
        (
            ["search", "--task", "synthetic", "--workers", "2", "--storage", "postgresql+psycopg://u@127.0.0.1:1/x"],
            3,
            "cannot open study database",
        ),
        (["worker", "--study", "synthetic"], 3, "does not exist; run 'adamtune search' first"),
        (["worker", "--study", "synthetic", "--device", "cuda:3"], 2, "device 'cuda:3' is not available"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(workdir: Path, args: list[str], code: int, message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == code, result.output
    assert message in one_line_error(result)
    assert listing(workdir) == []


def test_bad_heartbeat_settings_are_rejected_before_anything_is_written(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAMTUNE_HEARTBEAT_SECONDS", "5")
    monkeypatch.setenv("ADAMTUNE_GRACE_SECONDS", "5")
    result = invoke("search", "--task", "synthetic", "--no-tracking")
    assert result.exit_code == 2
    assert "must be longer than the heartbeat interval" in one_line_error(result)
    assert listing(workdir) == []
    monkeypatch.setenv("ADAMTUNE_GRACE_SECONDS", "soon")
    with pytest.raises(ConfigError, match="whole number of seconds"):
        heartbeat_settings()


def test_worker_for_an_unknown_study_lists_the_existing_ones_and_changes_nothing(workdir: Path) -> None:
    """The refused worker writes nothing: the file's bytes and mtime stay, and its write-ahead log gets no frame.

    The study's own storage is closed before the file is read. While it is open, the study's rows are
    committed to ``adamtune.db-wal``, not yet to the file, and the last connection to close copies them
    into the file (SQLite's checkpoint on close): when that was this test's connection, freed by the
    garbage collector while the worker ran, the file's bytes changed although the worker wrote nothing
    (pages 2-16: the study's rows; intermittent, as the collector's timing is). Closed, the file alone is
    the whole database, so any change is the worker's: a write it commits is a frame in the log (its last
    connection stays open in this process), or, checkpointed, new bytes and mtime in the file.
    """
    database, log = workdir / "adamtune.db", workdir / "adamtune.db-wal"
    storage = open_storage("sqlite:///adamtune.db")
    create_or_resume(
        build_spec("synthetic", None, None, {"n_trials": 4, "epochs": 2}).with_task_defaults(5, 100), storage
    )
    storage.engine.dispose()  # the last connection: the log is checkpointed into the file and removed
    assert not log.exists()
    before = (database.read_bytes(), database.stat().st_mtime_ns)
    result = invoke("worker", "--study", "cifar10", "--no-tracking")
    assert result.exit_code == 3
    assert "no study named 'cifar10' in this storage (studies: synthetic)" in one_line_error(result)
    assert (database.read_bytes(), database.stat().st_mtime_ns) == before
    assert not log.exists() or log.stat().st_size == 0  # no frame: nothing committed
    assert "mlflow.db" not in listing(workdir)


@pytest.mark.postgres
def test_worker_on_a_database_without_studies_creates_no_tables(workdir: Path, postgres_url: str) -> None:
    result = invoke("worker", "--study", "synthetic", "--storage", postgres_url, "--no-tracking")
    assert result.exit_code == 3
    assert "holds no studies" in one_line_error(result)
    assert sqlalchemy.inspect(sqlalchemy.create_engine(postgres_url)).get_table_names() == []


def test_worker_joins_an_existing_study_and_stops_at_its_target(workdir: Path) -> None:
    make_study("sqlite:///adamtune.db", n_trials=3)
    result = invoke("worker", "--study", "synthetic", "--no-tracking", "--name", "solo", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "[solo cpu] trial 0 (baseline):" in result.stderr
    study = optuna.load_study(study_name="synthetic", storage="sqlite:///adamtune.db")
    assert sum(t.state.is_finished() for t in study.trials) == 3
    assert {t.user_attrs["adamtune.worker"] for t in study.trials} == {"solo"}


# --- devices and CPU threads ---------------------------------------------------------------------------


def test_devices_are_assigned_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU can exist on this machine: simulate one with two CUDA devices (device_count only).
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert resolve_devices("auto", 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert resolve_devices("cuda:0,cuda:1", 8) == ["cuda:0", "cuda:1"] * 4
    assert resolve_devices("cuda", 1) == ["cuda:0"]
    with pytest.raises(DeviceError, match="this machine has 2 CUDA device"):
        resolve_devices("cuda:0,cuda:3", 2)


def test_auto_without_a_gpu_means_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulates a machine without CUDA explicitly, so the test means the same on a GPU runner.
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert resolve_devices("auto", 2) == ["cpu", "cpu"]


def test_cpu_workers_split_the_cores_and_get_distinct_names() -> None:
    base = WorkerOptions(storage_url="sqlite:///x.db", study_name="s", seed=7)
    plans = plan_workers(base, ["cpu", "cpu", "cpu", "cpu"], cores=8)
    assert [p.threads for p in plans] == [2, 2, 2, 2]
    assert [p.label for p in plans] == ["w0", "w1", "w2", "w3"]
    assert len({p.name for p in plans}) == 4 and all(p.name.endswith(p.label) for p in plans)
    assert [p.index for p in plans] == [0, 1, 2, 3]
    assert [p.threads for p in plan_workers(base, ["cpu"] * 3, cores=2)] == [1, 1, 1]
    mixed = plan_workers(base, ["cuda:0", "cpu"], cores=16)
    assert [p.threads for p in mixed] == [8, 16]


# --- storage: retries and stale trials -----------------------------------------------------------------


def test_a_locked_database_is_retried_until_it_is_free(tmp_path: Path) -> None:
    """A real SQLite write lock held for ~1 s by another connection: the write is retried, then succeeds."""
    path = tmp_path / "locked.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    holder = sqlalchemy.create_engine(f"sqlite:///{path}").raw_connection()
    holder.execute("BEGIN EXCLUSIVE")
    timer = threading.Timer(1.0, holder.rollback)
    timer.start()
    attempts: list[int] = []

    def write() -> None:
        attempts.append(1)
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")

    try:
        with_db_retry(write, "writing", budget_seconds=30)
    finally:
        timer.join()
    assert len(attempts) > 1
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1


def test_a_database_that_stays_down_ends_in_a_storage_error(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/missing-dir/x.db")  # cannot be opened
    with pytest.raises(StorageError, match="failed for 1s while reading"):
        with_db_retry(lambda: engine.connect().close(), "reading", budget_seconds=1)


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        with_db_retry(broken, "anything", budget_seconds=30)
    assert calls == [1]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # ask() outside optimize
def test_a_stale_baseline_is_retried_as_the_baseline(workdir: Path) -> None:
    """The retry keeps params and the baseline mark, and drops what belonged to the dead run."""
    study = make_study("sqlite:///adamtune.db")
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[0]
    trial = study.ask()
    assert trial.number == waiting.number and trial.user_attrs[BASELINE_ATTR] is True
    suggest(trial, build_spec("synthetic").space)  # as the objective does: the fixed baseline values
    trial.set_user_attr(RUN_ID_ATTR, "dead-run")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    failed = study.trials[trial.number]

    callback = RetryStaleTrial(max_retry=1)
    callback(study, failed)
    retry = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[0]
    assert retry.params == failed.params and retry.params
    assert retry.user_attrs == {BASELINE_ATTR: True}
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == failed.number
    assert callback.drain() == [failed] and callback.drain() == []

    # A baseline that goes stale again is retried again, beyond max_retry: the study must get one.
    for _ in range(3):
        again = study.ask()
        assert again.user_attrs[BASELINE_ATTR] is True
        study.tell(again, state=optuna.trial.TrialState.FAIL)
        callback(study, study.trials[again.number])
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1

    study.tell(study.ask(), 1.0)  # the baseline's last retry completes

    # Any other trial is not retried beyond max_retry.
    for _ in range(2):
        other = study.ask()
        assert not other.user_attrs.get(BASELINE_ATTR)
        study.tell(other, state=optuna.trial.TrialState.FAIL)
        callback(study, study.trials[other.number])
    assert study.get_trials(states=(optuna.trial.TrialState.WAITING,)) == []


class RacingWorker(Worker):
    """A worker that pauses between reading the target and counting, until a second worker is there too.

    Without the admission lock both would count the same free place and both start a trial; with it, the
    second cannot get there while the first holds the lock, so the barrier times out and they go in turn.
    """

    barrier = threading.Barrier(2, timeout=1.5)

    def _target(self) -> int:
        with contextlib.suppress(threading.BrokenBarrierError):
            RacingWorker.barrier.wait()
        return super()._target()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_workers_racing_for_the_last_place_start_one_trial(
    backend: str, workdir: Path, request: pytest.FixtureRequest
) -> None:
    url = "sqlite:///adamtune.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    make_study(url, n_trials=1)
    RacingWorker.barrier = threading.Barrier(2, timeout=1.5)
    workers = [RacingWorker(load_study("synthetic", open_storage(url, create=False)), None, 1) for _ in range(2)]  # type: ignore[arg-type]
    admissions: list[Admission] = []
    threads = [threading.Thread(target=lambda w=w: admissions.append(w._admit(Interrupts(())))) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    started = [a.trial for a in admissions if a.trial is not None]
    assert len(admissions) == 2 and len(started) == 1
    waiting = [a for a in admissions if a.trial is None]
    assert waiting[0].counts.running == 1 and not waiting[0].done
    workers[0].study.tell(started[0], state=optuna.trial.TrialState.FAIL)


@pytest.mark.parametrize("stage", ["trials", "confirmation"])
def test_an_interrupt_between_admission_and_run_leaves_nothing_running(
    stage: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM/Ctrl-C can land after a trial (or a confirmation run) was created RUNNING and before its run's
    own handler owns it. The worker must still end it: FAIL, and a trial is re-queued. The interrupt is
    raised at that point by hand (a real signal cannot be aimed at it); the study is a real SQLite file."""
    import adamtune.confirm.stage as confirm_stage
    from adamtune.core.confirm_rule import confirm_study_name
    from adamtune.launch.worker_setup import join_study

    url = "sqlite:///adamtune.db"
    make_study(url, n_trials=2)
    worker = join_study(WorkerOptions(storage_url=url, study_name="synthetic", tracking=False, seed=1))
    calls: list[object] = []

    def interrupted(*args: object) -> None:  # called right after each admission
        calls.append(args)
        raise KeyboardInterrupt

    if stage == "trials":
        monkeypatch.setattr(worker, "_close_stale_runs", interrupted)
    else:  # the two trials run; the stage's first run is interrupted
        monkeypatch.setattr(confirm_stage, "_close_stale_runs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    assert calls
    state = optuna.trial.TrialState
    states = [t.state for t in worker.study.get_trials(deepcopy=False)]
    assert state.RUNNING not in states, states
    if stage == "trials":
        assert states == [state.FAIL, state.WAITING]  # the baseline, failed, and its retry queued
    else:
        runs = optuna.load_study(study_name=confirm_study_name("synthetic"), storage=url).trials
        assert [t.state for t in runs] == [state.FAIL], runs
