"""Study files: built-in defaults, precedence, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from adamtune.core.config import PRUNER_NAMES, SAMPLER_NAMES, build_spec, builtin_study_file
from adamtune.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_builtin_study_file_is_used_for_a_builtin_task() -> None:
    spec = build_spec("digits")
    assert builtin_study_file("digits") is not None
    assert spec.study_name == "digits" and spec.epochs == 20 and spec.n_trials == 30
    assert spec.sampler == "tpe" and spec.pruner == "hyperband" and spec.direction == "minimize"
    assert spec.source.endswith("digits.toml")


def test_command_line_overrides_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[study]\ntask = "synthetic"\nepochs = 7\nn_trials = 12\n[space]\nbeta1 = 0.9\n')
    spec = build_spec(None, path, None, {"n_trials": 3, "epochs": None, "objective": "val_accuracy"})
    assert spec.task == "synthetic" and spec.epochs == 7 and spec.n_trials == 3
    assert spec.direction == "maximize" and spec.space["beta1"].value == 0.9
    assert spec.batch_size is None  # left to the task's default
    assert spec.with_task_defaults(5, 64).batch_size == 64


def test_user_task_without_file_gets_defaults() -> None:
    spec = build_spec("mypkg.tasks:make_task", study_name="mine")
    assert spec.study_name == "mine" and spec.source == "built-in defaults" and spec.epochs is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[study]\ntask = "digits"\nepoch = 3\n', "unknown key 'epoch' in [study] of"),
        ('[studies]\ntask = "digits"\n', "unknown key 'studies'"),
        ('[study]\ntask = "digits"\nsampler = "bayes"\n', "sampler in [study] of"),
        ('[study]\ntask = "digits"\nepochs = 0\n', "epochs in [study] of"),
        ('[study]\ntask = "digits"\nn_trials = "ten"\n', "n_trials in [study] of"),
        ("[study\ntask = 1", "is not valid TOML"),
        ('[study]\ntask = "digits"\n[space]\nbeta2 = { low = 0.9, high = 1.5 }\n', "[space].beta2.high"),
    ],
)
def test_malformed_study_files_name_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        build_spec(None, path)
    assert fragment in str(error.value)
    assert str(path) in str(error.value)


def test_missing_file_and_missing_task(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_spec("digits", tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="no task given"):
        build_spec(None, write(tmp_path, "[study]\nepochs = 2\n"))


def test_names_match_the_factories() -> None:
    from adamtune.storage.algorithms import PRUNERS, SAMPLERS

    assert set(SAMPLER_NAMES) == set(SAMPLERS) and set(PRUNER_NAMES) == set(PRUNERS)


def test_every_shipped_study_file_is_valid() -> None:
    from adamtune.core.config import studies_dir

    files = sorted(studies_dir().glob("*.toml"))
    assert {"digits.toml", "synthetic.toml"} <= {f.name for f in files}
    for path in files:
        spec = build_spec(None, path)
        assert spec.task == path.stem


def test_the_objective_and_its_direction_come_from_the_task() -> None:
    from dataclasses import replace

    from adamtune.tasks import resolve_task

    diabetes = resolve_task("diabetes")
    spec = replace(build_spec("diabetes"), objective=None)  # nothing names one: the task decides
    filled = spec.with_task(diabetes)
    assert (filled.objective, filled.direction, filled.epochs) == ("val_mae", "minimize", 30)
    assert build_spec("digits", overrides={"objective": "accuracy"}).with_task(resolve_task("digits")).direction == (
        "maximize"
    )
    with pytest.raises(ConfigError, match="valid objectives: val_mae, val_loss"):
        build_spec("diabetes", overrides={"objective": "val_r2"}).with_task(diabetes)
