"""Nothing lost: a tiny `finecap train` killed (SIGKILL, SIGINT) at random points resumes from
its last checkpoint each time; a second writer, a changed run, a planted checkpoint, a NaN
loss and an unreadable image are refused with one message."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from finecap.captioner import Captioner
from finecap.cli import main
from finecap.data.images import load_image
from finecap.io import FolderLock
from finecap.scenes import generate_world
from finecap.train.checkpoints import checkpoint_position

EVERY = 3  # steps between checkpoints
TINY = {
    "model.encoder.image_size": 48, "model.encoder.width": 16, "model.decoder.hidden_size": 32,
    "model.decoder.embed_size": 16, "model.decoder.attention_size": 16, "data.batch_size": 4,
    "data.val_images": 4, "optim.warmup_steps": 2, "trainer.threads": 1,
    "trainer.checkpoint_every_n_steps": EVERY,
}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), 48, seed=4, image_size=48)


def _args(world: Path, out: Path, epochs: int, **changes: object) -> list[str]:
    settings = {**TINY, "data.dataset": world, "optim.max_epochs": epochs, **changes}
    sets = [f"--set={key}={value}" for key, value in settings.items()]
    return ["train", "--config", "scenes_lstm", "--output-dir", str(out), *sets]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "finecap.cli", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _wait_for_step(last: Path, step: int, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last.exists() and checkpoint_position(last)[0] >= step:
            return
        assert process.poll() is None, "training ended before the checkpoint was reached"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def test_sigkill_at_random_points_resumes_from_the_last_checkpoint(
    world: Path, tmp_path: Path
) -> None:
    out, last = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = _args(world, out, epochs=4)  # 10 steps an epoch, 40 in all
    rng = random.Random(0)
    saved: list[int] = []
    for attempt in range(3):
        process = _start(args, tmp_path / f"kill{attempt}.log")
        _wait_for_step(last, (saved[-1] if saved else 0) + EVERY, process)
        time.sleep(rng.uniform(0.0, 0.4))
        process.send_signal(signal.SIGKILL)
        process.wait()
        step, _ = checkpoint_position(last)
        # At most one interval lost: every checkpoint lands on an interval or an epoch's end.
        assert step % EVERY == 0 or step % 10 == 0, step
        saved.append(step)
        log = (tmp_path / f"kill{attempt}.log").read_text()
        if attempt:
            assert f"resuming from step {saved[-2]} " in log
    assert saved == sorted(saved) and saved[-1] > saved[0]
    final = subprocess.run(
        [sys.executable, "-m", "finecap.cli", *args], capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr
    assert f"resuming from step {saved[-1]} " in final.stdout
    assert checkpoint_position(last)[0] == 40
    captioner = Captioner.from_pretrained(out / "model")
    [caption] = captioner.caption([load_image(world.parent / "images" / "scene_000000.png")])
    assert isinstance(caption.text, str)
    # A finished run does nothing when run again.
    again = subprocess.run(
        [sys.executable, "-m", "finecap.cli", *args], capture_output=True, text=True
    )
    assert again.returncode == 0 and "finished already" in again.stdout


def test_sigint_mid_epoch_saves_the_step_and_the_rerun_continues(
    world: Path, tmp_path: Path
) -> None:
    out, last = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = _args(world, out, epochs=30, **{"trainer.checkpoint_every_n_steps": 1000})
    process = _start(args, tmp_path / "int.log")
    _wait_for_step(last, 10, process)  # the end of epoch 0
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    log = (tmp_path / "int.log").read_text()
    assert "Traceback" not in log
    step, epoch = checkpoint_position(last)
    assert f"SIGINT: stopped at step {step} (epoch {epoch})" in log and step > 10
    assert not (out / "model").exists()  # nothing exported from an unfinished run
    rerun = _start(args, tmp_path / "int2.log")
    _wait_for_step(last, step + 1, rerun)
    rerun.send_signal(signal.SIGTERM)
    assert rerun.wait(timeout=60) == 143
    assert f"resuming from step {step} " in (tmp_path / "int2.log").read_text()


def test_a_second_writer_and_a_changed_run_are_refused(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    with FolderLock(out):
        assert main(_args(world, out, epochs=1)) == 2
    err = capsys.readouterr().err
    assert f"is in use by another finecap process (pid {os.getpid()})" in err
    assert main(_args(world, out, epochs=1)) == 0  # the lock is free again
    capsys.readouterr()
    before = (out / "config.yaml").read_text()
    assert main(_args(world, out, epochs=2, seed=7)) == 2
    err = capsys.readouterr().err
    assert "seed: recorded 0, now 7" in err and "--force" in err
    assert (out / "config.yaml").read_text() == before  # the recorded run is untouched
    assert main([*_args(world, out, epochs=2, seed=7), "--force"]) == 0


def test_a_planted_checkpoint_is_not_unpickled(world: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    marker = tmp_path / "pwned"
    (out / "checkpoints").mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": Payload(), "global_step": 3}, out / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's old default
    completed = subprocess.run(
        [sys.executable, "-m", "finecap.cli", *_args(world, out, epochs=1)],
        capture_output=True,
        text=True,
        env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )
    assert completed.returncode == 2
    assert "refused" in completed.stderr and "Traceback" not in completed.stderr
    assert not marker.exists()


def test_a_non_finite_loss_stops_training_and_exports_nothing(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(_args(world, out, epochs=2, **{"optim.lr": 1e30, "optim.warmup_steps": 0})) == 2
    assert "non-finite loss" in capsys.readouterr().err
    assert not (out / "model").exists()


def test_unreadable_images_are_found_before_training(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import json
    import shutil

    copy = tmp_path / "world"
    shutil.copytree(world.parent, copy)
    entries = json.loads((copy / "dataset.json").read_text())["images"]
    val = next(e for e in entries if e["split"] == "val")
    bad = copy / val["filepath"] / val["filename"]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated mid-image
    out = tmp_path / "run"
    started = time.perf_counter()
    assert main(_args(copy / "dataset.json", out, epochs=1)) == 2
    err = capsys.readouterr().err
    assert "1 unreadable images" in err and bad.name in err and "bad_images: skip" in err
    assert time.perf_counter() - started < 30 and not out.exists()
    assert main([*_args(copy / "dataset.json", out, epochs=1), "--set=data.bad_images=skip"]) == 0
    assert "left out 1 unreadable images" in capsys.readouterr().out


def test_an_interrupted_export_is_recovered(tmp_path: Path) -> None:
    from helpers.tiny_captioners import make_tiny_captioner

    captioner = make_tiny_captioner()
    folder = tmp_path / "model"
    captioner.save_pretrained(folder)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~_umask()
    # A kill between the two renames of a re-export: the old folder aside, the new one not in.
    folder.rename(tmp_path / ".model.old")
    (tmp_path / ".model.abc_1234").mkdir()  # a temporary folder of the interrupted export
    (tmp_path / ".model.v2.old").mkdir()  # a sibling model.v2's backup: not ours to remove
    Captioner.recover(folder)
    assert folder.is_dir() and [p.name for p in tmp_path.glob(".model.*")] == [".model.v2.old"]
    Captioner.from_pretrained(folder)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
