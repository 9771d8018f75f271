"""The recommended settings as data or code: ``adamtune recommend --format json|toml|torch|keras``.

Each formatter takes a :class:`~adamtune.report.summary.StudySummary` whose ``recommended`` is set (see
:func:`adamtune.report.summary.recommendation`) and returns text. The torch and Keras snippets run as printed:
the torch one expects a ``model`` variable and defines ``optimizer`` and ``scheduler``; the Keras one
defines ``optimizer`` with an ``InverseTimeDecay`` schedule (a small ``LearningRateSchedule`` subclass
when there is a warmup).

The snippets are generated from the same description :mod:`adamtune.training.optim` trains with: the schedule
``lr * min(1, (t + 1) / warmup) / (1 + decay * t)`` and, with weight decay, the parameter groups
(decay only for parameters of two or more dimensions).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from adamtune.confirm.ranking import LATE_EPOCHS, settings_dict
from adamtune.core.errors import ConfigError
from adamtune.report.render import format_value
from adamtune.report.summary import StudySummary

#: ``adamtune recommend --format`` values.
FORMATS = ("table", "json", "toml", "torch", "keras")


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased if it is one of :data:`FORMATS`.

    Raises:
        ConfigError: an unknown format (the message lists the valid ones).
    """
    if fmt.lower() not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return fmt.lower()


def _num(value: float) -> str:
    """A float as a Python/Keras literal with 8 significant digits (enough for betas like 0.99990001)."""
    return f"{float(value):.8g}"


def _header(summary: StudySummary) -> list[str]:
    rec = summary.recommended
    assert rec is not None
    lines = [
        f"# Adam settings recommended by adamtune for study {summary.study!r} (task {summary.task}): "
        f"trial {rec.trial},",
        f"# {summary.objective} {rec.score:.4g} (mean of the last {LATE_EPOCHS} of {summary.epochs} epochs, "
        f"batch size {summary.batch_size})",
    ]
    if summary.baseline is not None and summary.gain is not None:
        lines[-1] += f" vs {summary.baseline.score:.4g} with {_defaults_name(summary)}."
    return lines


def _defaults_name(summary: StudySummary) -> str:
    return "AdamW's defaults" if summary.defaults.weight_decay > 0 else "Adam's defaults"


def _literal(value: float | int | bool) -> str:
    """A TOML literal: booleans lower-case, the integer warmup as an int, other numbers exact floats."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def format_json(summary: StudySummary) -> str:
    """The recommended settings as a flat JSON object: lr, beta1, beta2, epsilon, decay (+ extras such as warmup)."""
    assert summary.recommended is not None
    return json.dumps(settings_dict(summary.recommended.params, summary.extra_dimensions), indent=2) + "\n"


def format_toml(summary: StudySummary) -> str:
    """The recommended settings as flat TOML keys (exact values), with a comment naming the source."""
    assert summary.recommended is not None
    lines = _header(summary)
    for key, value in settings_dict(summary.recommended.params, summary.extra_dimensions).items():
        lines.append(f"{key} = {_literal(value)}")
    return "\n".join(lines) + "\n"


def format_torch(summary: StudySummary) -> str:
    """A paste-able PyTorch snippet defining ``optimizer`` and ``scheduler`` for an existing ``model``.

    ``torch.optim.Adam`` (``AdamW`` when weight_decay > 0, with the two parameter groups of
    :func:`adamtune.training.optim.param_groups`) and a ``LambdaLR`` applying
    ``min(1, (step + 1) / warmup) / (1 + decay * step)`` (the warmup factor only when there is a warmup);
    ``scheduler.step()`` must follow every ``optimizer.step()``.
    """
    assert summary.recommended is not None
    p = summary.recommended.params
    warmup = p.warmup > 1  # 0 and 1 are both "no warmup"
    formula = "lr * min(1, (t + 1) / warmup) / (1 + decay * t)" if warmup else "lr / (1 + decay * t)"
    lines = [
        *_header(summary),
        "# Needs `model` (your torch.nn.Module). Call scheduler.step() after every optimizer.step(): the",
        f"# learning rate of update t (from 0) is {formula}"
        + (f" with warmup = {p.warmup} steps." if warmup else ", the Keras-style decay adamtune tunes."),
        "import torch",
        "",
    ]
    kwargs = f"lr={_num(p.lr)}, betas=({_num(p.beta1)}, {_num(p.beta2)}), eps={_num(p.epsilon)}"
    if p.amsgrad:
        kwargs += ", amsgrad=True"
    if p.weight_decay > 0:
        lines += [
            "# Decoupled weight decay for parameters with 2+ dimensions (weights, embeddings) only; none for",
            "# biases and norm scales (the nanoGPT / Hugging Face convention adamtune tuned with).",
            "decay = [p for p in model.parameters() if p.dim() >= 2]",
            "no_decay = [p for p in model.parameters() if p.dim() < 2]",
            "groups = [",
            f'    {{"params": decay, "weight_decay": {_num(p.weight_decay)}}},',
            '    {"params": no_decay, "weight_decay": 0.0},',
            "]",
            f"optimizer = torch.optim.AdamW(groups, {kwargs})",
        ]
    else:
        lines.append(f"optimizer = torch.optim.Adam(model.parameters(), {kwargs})")
    if warmup:
        lines.append(
            "scheduler = torch.optim.lr_scheduler.LambdaLR(\n"
            f"    optimizer, lambda step: min(1, (step + 1) / {p.warmup}) / (1 + {_num(p.decay)} * step)\n"
            ")"
        )
    else:
        lines.append(
            f"scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + {_num(p.decay)} * step))"
        )
    return "\n".join(lines) + "\n"


def format_keras(summary: StudySummary) -> str:
    """A paste-able Keras 3 snippet defining ``optimizer`` with the same schedule.

    Without warmup the schedule is Keras's ``InverseTimeDecay``; with one, a four-line
    ``LearningRateSchedule`` subclass of the same formula (Keras calls it with the 0-based step). With
    weight decay the snippet needs ``model`` and excludes its variables of fewer than two dimensions
    (``exclude_from_weight_decay``), the same groups as in PyTorch.
    """
    assert summary.recommended is not None
    p = summary.recommended.params
    cls = "AdamW" if p.weight_decay > 0 else "Adam"
    extra = f", weight_decay={_num(p.weight_decay)}" if p.weight_decay > 0 else ""
    extra += ", amsgrad=True" if p.amsgrad else ""
    lines = [
        *_header(summary),
        "# Keras applies epsilon slightly differently from PyTorch, where adamtune tuned it: Keras adds it to",
        '# sqrt(v) before bias correction (the "epsilon hat" of Kingma & Ba, 2015, section 2), PyTorch after.',
        "# The same number therefore acts like PyTorch's eps / sqrt(1 - beta_2**t): larger during the first",
        "# ~1 / (1 - beta_2) steps, the same afterwards.",
    ]
    if p.weight_decay > 0:
        lines.append("# Needs `model` (your keras.Model, built): weight decay skips its variables of < 2 dimensions.")
    lines += ["import keras", ""]
    if p.warmup > 1:
        lines += [
            "",
            "class WarmupInverseTimeDecay(keras.optimizers.schedules.LearningRateSchedule):",
            '    """lr * min(1, (step + 1) / warmup) / (1 + decay * step), step counted from 0."""',
            "",
            "    def __call__(self, step):",
            '        step = keras.ops.cast(step, "float32")',
            f"        ramp = keras.ops.minimum(1.0, (step + 1.0) / {p.warmup})",
            f"        return {_num(p.lr)} * ramp / (1.0 + {_num(p.decay)} * step)",
            "",
            "",
            "learning_rate = WarmupInverseTimeDecay()",
        ]
    else:
        lines += [
            "learning_rate = keras.optimizers.schedules.InverseTimeDecay(",
            f"    initial_learning_rate={_num(p.lr)}, decay_steps=1, decay_rate={_num(p.decay)}",
            ")",
        ]
    lines += [
        f"optimizer = keras.optimizers.{cls}(",
        f"    learning_rate=learning_rate, beta_1={_num(p.beta1)}, beta_2={_num(p.beta2)}, "
        f"epsilon={_num(p.epsilon)}{extra}",
        ")",
    ]
    if p.weight_decay > 0:
        lines += [
            "optimizer.exclude_from_weight_decay(",
            "    var_list=[v for v in model.trainable_variables if len(v.shape) < 2]",
            ")",
        ]
    return "\n".join(lines) + "\n"


FORMATTERS: dict[str, Callable[[StudySummary], str]] = {
    "json": format_json,
    "toml": format_toml,
    "torch": format_torch,
    "keras": format_keras,
}


def render_recommendation(summary: StudySummary) -> Any:
    """A rich table of the recommended settings next to the study's defaults (``recommend --format table``)."""
    from rich.table import Table

    rec = summary.recommended
    assert rec is not None
    table = Table(
        title=f"{summary.study} (task {summary.task}): trial {rec.trial}",
        title_justify="left",
        caption=_header(summary)[-1].lstrip("# "),
        caption_justify="left",
    )
    default_column = "AdamW default" if summary.defaults.weight_decay > 0 else "Adam default"
    for name in ("setting", "recommended", default_column):
        table.add_column(name, justify="left" if name == "setting" else "right")
    for key, value in settings_dict(rec.params, summary.extra_dimensions).items():
        table.add_row(key, format_value(value, key), format_value(getattr(summary.defaults, key), key))
    return table
