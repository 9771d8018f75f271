"""The ``tinylm`` task: the deterministic split of the standard library's source, windows, model, training."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch

from adamtune.core.errors import DataError
from adamtune.core.space import AdamParams
from adamtune.tasks import tinylm
from adamtune.training.optim import make_optimizer, scheduled_lr


def _bucket(name: str) -> int:
    """The split rule written out again: the first 8 bytes of sha256(name), big-endian, mod 10."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) % 10


def test_split_is_a_fixed_hash_of_the_file_name() -> None:
    names = [p.name for p in tinylm.source_files()]
    assert names == sorted(names) and len(names) > 100 and "os.py" in names
    for name in names:
        assert tinylm.split_of(name) == {0: "test", 1: "val"}.get(_bucket(name), "train")
    counts = {s: sum(tinylm.split_of(n) == s for n in names) for s in ("train", "val", "test")}
    assert counts["train"] > 5 * counts["val"] > 0 and counts["test"] > 0
    # fixed assignments (they hold on every machine), so a change of the rule cannot go unnoticed
    fixed = {"os.py": "train", "bisect.py": "val", "datetime.py": "val", "operator.py": "test", "stat.py": "test"}
    assert {n: tinylm.split_of(n) for n in fixed} == fixed


def _corpus(root: Path) -> None:
    for i in range(40):
        (root / f"mod{i:02d}.py").write_bytes(f"# module {i}\n".encode() + bytes(range(32, 127)) * (i + 1))
    (root / "package").mkdir()
    (root / "package" / "inner.py").write_text("not read: packages are left out\n")
    (root / "notes.txt").write_text("not read: not a .py file\n")


def test_splits_are_disjoint_capped_and_deterministic(tmp_path: Path) -> None:
    _corpus(tmp_path)
    files = tinylm.source_files(tmp_path)
    assert [p.name for p in files] == [f"mod{i:02d}.py" for i in range(40)]
    texts = tinylm.split_bytes(files, file_bytes=1000)
    for split, text in texts.items():
        mine = [p for p in files if tinylm.split_of(p.name) == split]
        assert mine and text == b"".join(p.read_bytes()[:1000] + tinylm.SEPARATOR for p in mine)
    assert b"module" in texts["val"] and b"not read" not in b"".join(texts.values())
    first = tinylm.load_text_data(tmp_path, file_bytes=1000)
    again = tinylm.load_text_data(tmp_path, file_bytes=1000)
    for split in ("train", "val", "test"):
        for a, b in zip(first.split(split), again.split(split), strict=True):
            assert torch.equal(a, b)
    assert first.digest == again.digest and len(first.digest) == 12
    (tmp_path / "mod00.py").write_bytes(b"changed")
    assert tinylm.load_text_data(tmp_path, file_bytes=1000).digest != first.digest


def test_a_library_without_sources_is_a_one_line_data_error(tmp_path: Path) -> None:
    (tmp_path / "os.py").write_text("import sys\n")
    with pytest.raises(DataError, match="too little text"):
        tinylm.load_text_data(tmp_path)


def test_windows_are_next_byte_pairs() -> None:
    x, y = tinylm.windows(bytes(range(200)) + bytes(range(100)), context=128)
    assert x.shape == y.shape == (2, 128) and x.dtype == torch.long
    assert torch.equal(x[0], torch.arange(128)) and torch.equal(y[0], torch.arange(1, 129))
    assert torch.equal(y[:, :-1], x[:, 1:])


def test_real_corpus_loads_into_token_tensors() -> None:
    data = tinylm.load_text_data()
    x, y = data.train
    texts = tinylm.split_bytes(tinylm.source_files())
    assert x.shape == y.shape == ((len(texts["train"]) - 1) // tinylm.CONTEXT, tinylm.CONTEXT)
    assert bytes(x[0].tolist()) == texts["train"][:128]
    assert len(data.val[0]) > 500 and len(data.test[0]) > 500


def test_epoch_batches_are_a_pure_function_covering_each_pass() -> None:
    first = tinylm.epoch_batches(100, 1, 16, seed=3, per_epoch=60)
    assert [len(b) for b in first] == [16, 16, 16, 12]
    again = tinylm.epoch_batches(100, 1, 16, seed=3, per_epoch=60)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    second = tinylm.epoch_batches(100, 2, 16, seed=3, per_epoch=60)
    seen = torch.cat(first + second)
    assert len(set(seen[:100].tolist())) == 100  # the first 100 windows are one full pass
    assert not torch.equal(torch.cat(first), torch.cat(tinylm.epoch_batches(100, 1, 16, seed=4, per_epoch=60)))


def test_model_shapes_tied_head_and_groups() -> None:
    torch.manual_seed(0)
    model = tinylm.TinyGPT(width=32, layers=2, heads=2, context=16)
    logits = model(torch.randint(0, 256, (3, 16)))
    assert logits.shape == (3, 16, 256)
    assert model.head.weight is model.embed.weight
    optimizer, _ = make_optimizer(model, AdamParams(weight_decay=0.1))
    decay = {id(p) for p in optimizer.param_groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decay}
    assert "embed.weight" in names and "blocks.0.qkv.weight" in names
    assert not any(n.endswith("bias") or ".ln" in n or n.startswith("ln") for n in names)
    # causal: changing a later byte does not change earlier logits
    x = torch.randint(0, 256, (1, 16))
    x2 = x.clone()
    x2[0, 10] = (x2[0, 10] + 1) % 256
    model.eval()
    torch.testing.assert_close(model(x)[:, :10], model(x2)[:, :10])


def test_a_short_training_run_lowers_the_validation_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = tinylm.load_text_data(file_bytes=600)
    model = tinylm.TinyGPT(width=32, layers=1, heads=2)
    params = AdamParams(lr=3e-3, beta2=0.98, warmup=10, weight_decay=0.01)
    optimizer, scheduler = make_optimizer(model, params)
    before = tinylm.evaluate(model, *data.val)
    assert abs(before - math.log(256)) < 0.5  # an untrained model is close to uniform over bytes
    losses = []
    for epoch in (1, 2):
        batches = tinylm.epoch_batches(len(data.train[0]), epoch, 16, seed=0, per_epoch=320)
        losses.append(tinylm.train_epoch(model, optimizer, scheduler, data.train, batches))
    after = tinylm.evaluate(model, *data.val)
    assert losses[1] < losses[0] and after < before - 1.0
    assert scheduler.get_last_lr()[0] == params.lr  # 40 steps: the 10-step warmup is over


def test_the_loop_task_reports_loss_and_perplexity_and_the_warmup_lr(tmp_path: Path) -> None:
    """The real ``fit`` (a tiny configuration) through adamtune's runner, on validation then test."""
    from adamtune.tasks import resolve_task
    from adamtune.training.runner import train_once

    assert resolve_task("tinylm").name == "tinylm"
    config = tinylm.TinyLMConfig(width=32, layers=1, heads=2, context=32, file_bytes=400, windows_per_epoch=96)
    task = tinylm.make_task(config)
    assert task.objective == "loss" and task.metric_names == ("loss", "perplexity")
    data = task.load_data(tmp_path)
    params = AdamParams(lr=3e-3, beta2=0.98, warmup=8, weight_decay=0.01)
    run = train_once(task, data, params, device="cpu", epochs=3, batch_size=16, seed=1, split="val")
    assert set(run.metrics) == {"val_loss", "val_perplexity"} and not run.diverged
    assert run.metrics["val_perplexity"] == pytest.approx(math.exp(run.metrics["val_loss"]))
    history = run.curves.history()
    assert history["val_loss"][-1] < history["val_loss"][0] < math.log(256)
    # 6 steps per epoch (96 windows / 16): the logged lr is the schedule's after 6, 12 and 18 steps
    assert history["lr"] == pytest.approx([scheduled_lr(params, t) for t in (6, 12, 18)])
    assert history["lr"][0] < params.lr == history["lr"][1]
    test = train_once(task, data, params, device="cpu", epochs=1, batch_size=16, seed=1, split="test")
    assert set(test.metrics) == {"test_loss", "test_perplexity"}
