"""``adamtune search`` and ``adamtune worker``: the commands that run trials, and the lines they print.

Each parses its options and calls the library (:mod:`adamtune.launch`); heavy imports happen when a
command runs, so ``adamtune --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from adamtune.cli.options import (
    checkpoint_store_option,
    data_dir_option,
    fail,
    handle_errors,
    storage_option,
    tracking_options,
)
from adamtune.core.budget import TIMED_TRIAL_CAP
from adamtune.core.config import PRUNER_NAMES, SAMPLER_NAMES
from adamtune.report.trial_lines import describe_confirm_run, describe_trial, outcome_lines
from adamtune.tasks import BUILTIN_TASKS, check_task_name


@click.command()
@click.option("--task", envvar="ADAMTUNE_TASK", help=f"Built-in task ({', '.join(BUILTIN_TASKS)}) or module:function.")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Study file (TOML); default: the built-in studies/<task>.toml.",
)
@click.option("--study", "study_name", envvar="ADAMTUNE_STUDY", help="Study name; default: the task name.")
@click.option(
    "--n-trials", type=click.IntRange(min=1), envvar="ADAMTUNE_N_TRIALS", help="Finished trials the study should hold."
)
@click.option(
    "--timeout",
    metavar="DURATION",
    help="Time budget of the whole search, confirmation included, e.g. 90s, 15m, 2h, 1h30m; with --n-trials the "
    "first reached ends it, alone it replaces the study file's trial target.",
)
@click.option(
    "--space",
    "space_mode",
    type=click.Choice(["auto", "full"]),
    help="auto: search lr alone, then add beta1, epsilon, beta2, decay as the budget grows; full: every dimension "
    "of the study file's [space] (default: the study file's, auto for built-in tasks).",
)
@click.option(
    "--warm-start",
    metavar="STUDY[,STUDY...]",
    help="Evaluate earlier studies' confirmed recommendations and top trials first: NAME (this database) or "
    "URL#NAME (another one); see 'adamtune studies --task T'.",
)
@click.option(
    "--stop-when-converged/--no-stop-when-converged",
    default=None,
    help="End the trial phase early once more search is unlikely to pay: the best stopped improving and the top "
    "trials lie within the seed noise (measured on 2 extra runs of the defaults).",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per trial (overrides the study file).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (overrides the study file).")
@click.option(
    "--objective",
    metavar="METRIC",
    help="Validation metric to optimise, e.g. val_loss, val_accuracy, val_mae; default: the task's objective.",
)
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), help="Optuna sampler (default tpe).")
@click.option("--pruner", type=click.Choice(PRUNER_NAMES), help="Optuna pruner (default hyperband).")
@click.option("--seed", type=click.IntRange(min=0), help="Make a one-worker search reproducible.")
@click.option(
    "--confirm-top",
    type=click.IntRange(min=1),
    help="Finalists the confirmation stage trains again on fresh seeds (default 3).",
)
@click.option(
    "--confirm-seeds",
    type=click.IntRange(min=2),
    help="Most fresh seeds per finalist and for Adam's defaults in the confirmation stage (default 5).",
)
@click.option(
    "--confirm-folds/--no-confirm-folds",
    "confirm_folds",
    default=None,
    help="Confirm each seed on a fresh split of the training + validation rows, where the task allows "
    "(default: on); --no-confirm-folds reuses the task's validation rows (seeds only).",
)
@click.option(
    "--confirm-budget",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SHARE",
    help="Most the confirmation stage trains, as a share of the epochs the search trials trained (default "
    "0.4; never less than one finalist and the defaults on 3 seeds).",
)
@click.option(
    "--confirm/--no-confirm",
    "confirm",
    default=None,
    help="After the trials, confirm the finalists against Adam's defaults on fresh seeds (default: on).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    metavar="EPOCHS",
    help="Checkpoint each trial every EPOCHS epochs so a retry resumes (0: never); default: every epoch "
    "for trials expected to take over a minute, else never.",
)
@click.option(
    "--keep-best-checkpoint",
    is_flag=True,
    default=None,
    help="Keep the final checkpoint of the best complete trial (<store>/<study>.best); others are removed.",
)
@click.option(
    "--batch-trials",
    type=click.IntRange(min=1),
    envvar="ADAMTUNE_BATCH_TRIALS",
    help="Trials a worker trains at once as one vectorised model (default 1; tasks that cannot batch: one at a time).",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes; 1 runs in this process. Each loads the data once and trains one trial at a time.",
)
@click.option(
    "--devices",
    "--device",
    "devices",
    default="auto",
    show_default=True,
    help="auto (every CUDA GPU, else the CPU) or a list such as cuda:0,cuda:1 or cpu; workers take them in turn.",
)
@storage_option
@tracking_options
@data_dir_option
@checkpoint_store_option
@handle_errors
def search(
    task: str | None,
    config: Path | None,
    study_name: str | None,
    n_trials: int | None,
    timeout: str | None,
    space_mode: str | None,
    warm_start: str | None,
    stop_when_converged: bool | None,
    epochs: int | None,
    batch_size: int | None,
    objective: str | None,
    sampler: str | None,
    pruner: str | None,
    seed: int | None,
    confirm_top: int | None,
    confirm_seeds: int | None,
    confirm_folds: bool | None,
    confirm_budget: float | None,
    confirm: bool | None,
    checkpoint_every: int | None,
    keep_best_checkpoint: bool | None,
    batch_trials: int | None,
    workers: int,
    devices: str,
    storage: str,
    tracking: bool,
    tracking_uri: str | None,
    system_metrics: bool,
    data_dir: Path | None,
    checkpoint_store: str | None,
) -> None:
    """Create or resume a study and run trials until it holds --n-trials finished ones, then confirm.

    The confirmation stage trains the top finalists and Adam's defaults again on fresh seeds and
    recommends a finalist only if it is better with confidence (see docs/guides/recommendation.md).

    \b
    adamtune search --task digits --workers 2 --devices cpu
    adamtune search --task cifar10 --workers 8 --devices cuda:0,cuda:1   # 4 trials at a time per GPU
    """
    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}", 2)
    import adamtune.api
    from adamtune.storage.backends import redact_url

    if task is not None:
        check_task_name(task)

    final: dict[str, Any] = {}

    def on_start(final_spec: Any, already: int) -> None:
        click.echo(
            f"study {final_spec.study_name!r} (task {final_spec.task}, {final_spec.epochs} epochs, "
            f"{final_spec.sampler}/{final_spec.pruner}) in {redact_url(storage)}: "
            f"{already} {budget_words(final_spec)} done",
            err=True,
        )
        if final_spec.warm_start:
            sources = ", ".join(redact_url(source) for source in final_spec.warm_start)
            click.echo(f"warm start from {sources}: their confirmed and best settings run first", err=True)
        final["spec"] = final_spec

    result = adamtune.api.search(
        task,
        config=config,
        study=study_name,
        n_trials=n_trials,
        timeout=timeout,
        space=space_mode,
        warm_start=warm_start,
        stop_when_converged=stop_when_converged,
        epochs=epochs,
        batch_size=batch_size,
        objective=objective,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        confirm=confirm,
        confirm_top=confirm_top,
        confirm_seeds=confirm_seeds,
        confirm_folds=confirm_folds,
        confirm_budget=confirm_budget,
        checkpoint_every=checkpoint_every,
        keep_best_checkpoint=keep_best_checkpoint,
        batch_trials=batch_trials,
        workers=workers,
        devices=devices,
        storage=storage,
        tracking=tracking,
        tracking_uri=tracking_uri,
        system_metrics=system_metrics,
        data_dir=data_dir,
        checkpoint_store=checkpoint_store,
        progress=True,
        on_start=on_start,
    )
    outcome = result.outcome
    assert outcome is not None  # a search's result says what it did
    best = f"{outcome.best_value:.4g}" if outcome.best_value is not None else "none yet"
    ended = {"time": " when the time budget ended the trials", "converged": " when the search converged"}
    click.echo(
        f"study {outcome.study_name!r}: {outcome.finished}/{outcome.target} finished trials "
        f"({outcome.ran} run now){ended.get(outcome.ended or '', '')}, best search-time "
        f"{final['spec'].objective} {best}.",
        err=True,
    )
    if outcome.summary is not None:
        for line in outcome_lines(outcome.summary, outcome.search_seconds, outcome.stage_seconds):
            click.echo(line, err=True)
    if tracking:
        from adamtune.tracking.ui import experiment_url, study_ui_url, ui_base_url

        if outcome.experiment is not None:  # known from the search's own tracker
            url: str | None = experiment_url(ui_base_url(outcome.experiment[0]), outcome.experiment[1])
        else:
            url = study_ui_url(tracking_uri, outcome.study_name)
        if url is not None:
            local = not (tracking_uri or "").startswith(("http://", "https://"))
            click.echo(f"learning curves: {url}" + (" (after 'adamtune ui')" if local else ""), err=True)
    click.echo("Next: adamtune summary", err=True)


@click.command()
@click.option("--study", "study_name", envvar="ADAMTUNE_STUDY", required=True, help="Name of the study to join.")
@click.option(
    "--device", default="auto", show_default=True, help="auto (the first CUDA GPU, else the CPU), cpu, cuda:N or mps."
)
@click.option("--name", "worker_name", help="Name recorded on its trials and MLflow runs; default <host>-p<pid>.")
@storage_option
@tracking_options
@data_dir_option
@checkpoint_store_option
@handle_errors
def worker(
    study_name: str,
    device: str,
    worker_name: str | None,
    storage: str,
    tracking: bool,
    tracking_uri: str | None,
    system_metrics: bool,
    data_dir: Path | None,
    checkpoint_store: str | None,
) -> None:
    """Join an existing study from this machine and run its trials until it holds its --n-trials.

    Then it shares the study's confirmation stage (finalists against Adam's defaults on fresh seeds), as
    every worker does.

    \b
    adamtune worker --study cifar10 --storage postgresql+psycopg://user@db/adamtune --device cuda:0

    Start the study with 'adamtune search' first; this worker uses its task, space and target.
    """
    import logging
    import os
    import socket

    from adamtune.launch.worker_setup import join_study
    from adamtune.storage.backends import redact_url
    from adamtune.storage.outcomes import count_trials
    from adamtune.training.devices import resolve_devices
    from adamtune.trials.worker import WorkerOptions

    resolved = resolve_devices(device, 1)[0]
    name = worker_name or f"{socket.gethostname()}-p{os.getpid()}"
    label = name.removeprefix(f"{socket.gethostname()}-")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[{label} {resolved}] %(message)s"))
    logging.getLogger("adamtune").addHandler(handler)
    logging.getLogger("adamtune").setLevel(logging.INFO)
    options = WorkerOptions(
        storage_url=storage,
        study_name=study_name,
        device=resolved,
        tracking=tracking,
        tracking_uri=tracking_uri,
        system_metrics=system_metrics,
        data_dir=data_dir,
        name=name,
        label=label,
        checkpoint_store=checkpoint_store,
    )
    runner = join_study(options)
    counts = count_trials(runner.study.get_trials(deepcopy=False))
    click.echo(
        f"worker {name} on {resolved} joined study {study_name!r} in {redact_url(storage)}: "
        f"{counts.finished} {'trials' if runner.n_trials >= TIMED_TRIAL_CAP else f'of {runner.n_trials} trials'} done",
        err=True,
    )
    runner.on_confirm_run = lambda run: click.echo(describe_confirm_run(run), err=True)
    try:
        ran = runner.run(on_trial=lambda _study, trial: click.echo(describe_trial(trial), err=True))
    finally:
        if runner.objective.tracker is not None:
            runner.objective.tracker.close()  # send what is queued for MLflow, or say what was dropped
    counts = count_trials(runner.study.get_trials(deepcopy=False))
    click.echo(f"worker {name}: ran {ran} trial(s); the study holds {counts.finished} finished trials", err=True)
    from adamtune.report.summary import summarize

    for line in outcome_lines(summarize(runner.study, importance=False)):
        click.echo(line, err=True)


def budget_words(spec: Any) -> str:
    """``of 30 trials``, ``trials, time budget 2h00m`` or ``of 30 trials, time budget 1m00s``."""
    from adamtune.core.budget import TIMED_TRIAL_CAP, format_duration

    trials = "trials" if spec.n_trials >= TIMED_TRIAL_CAP else f"of {spec.n_trials} trials"
    return trials if spec.timeout is None else f"{trials} (time budget {format_duration(spec.timeout)})"
