"""``optuna.importance`` without scikit-learn in adamtune's commands: the same PED-ANOVA numbers, less import.

Real parts: an Optuna SQLite study made with ``create_trial``, Optuna's own evaluator, fresh
interpreters (an import is only fresh once per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import optuna
from adamtune.report import importance_import
from adamtune.report.importance import param_importance
if sys.argv[2] == "command":
    importance_import.for_commands()
study = optuna.load_study(study_name="s", storage=sys.argv[1])
values, why = param_importance(study, study.get_trials())
fanova = None
try:
    optuna.importance.FanovaImportanceEvaluator()
except ImportError as exc:
    fanova = str(exc)
print(json.dumps({"values": values, "why": why, "sklearn": "sklearn" in sys.modules, "fanova": fanova,
                  "importable": __import__("importlib").util.find_spec("sklearn") is not None}))
"""


def probe(storage: str, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, storage, mode], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout)


def test_a_command_computes_the_same_importance_without_importing_scikit_learn(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=storage)
    space = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "one_minus_beta1": FloatDistribution(1e-3, 0.5, log=True)}
    for i in range(30):
        lr, b1 = 1e-5 * 1.3**i, 1e-3 * 1.2 ** ((i * 7) % 30)
        params = {"lr": lr, "one_minus_beta1": b1}
        study.add_trial(create_trial(params=params, distributions=space, value=(i - 20) ** 2))
    plain, command = probe(storage, "library"), probe(storage, "command")
    assert plain["why"] is None and plain["values"]
    assert command["values"] == plain["values"]  # the same numbers, from the same evaluator
    assert plain["sklearn"] and plain["fanova"] is None  # a library user's process: Optuna as it is
    assert not command["sklearn"] and command["importable"]  # hidden only while Optuna's package loaded
    assert "scikit-learn" in command["fanova"] or "sklearn" in command["fanova"]  # Optuna's own message
