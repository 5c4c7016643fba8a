"""`finecap reproduce`: the step scheduler (needs, resume, failures, kills, one run per folder)
on scripted steps, and the whole `--quick` pipeline end to end with the contract of its output
folder. Heavy imports stay inside the tests: the workers of scripted steps import this module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finecap.cli import main
from finecap.io import FolderLock
from finecap.reproduce import SCST_SYSTEMS, Step, run_steps

SYSTEMS = ["MLE", *SCST_SYSTEMS, "Reference"]


def _write_after(folder: Path, name: str, threads: int) -> None:
    """A scripted step: records which steps existed when it ran, then marks itself done."""
    seen = sorted(p.stem for p in folder.glob("*.done"))
    (folder / f"{name}.done").write_text(json.dumps({"seen": seen, "threads": threads}))


def _fail(folder: Path, threads: int) -> None:
    print("about to fail")
    raise ValueError("scripted failure")


def _steps(folder: Path) -> list[Step]:
    def step(name: str, needs: tuple[str, ...]) -> Step:
        return Step(name, (folder / f"{name}.done",), needs, _write_after, (folder, name))

    return [step("d", ("b", "c")), step("a", ()), step("b", ("a",)), step("c", ("a",))]


def test_steps_run_after_what_they_need_and_done_steps_are_skipped(tmp_path) -> None:
    timings: dict = {}
    run_steps(_steps(tmp_path), jobs=2, out=tmp_path, timings=timings)
    seen = {p.stem: json.loads(p.read_text())["seen"] for p in tmp_path.glob("*.done")}
    assert seen["a"] == []
    assert "a" in seen["b"] and "a" in seen["c"]
    assert {"a", "b", "c"} <= set(seen["d"])
    assert set(timings) == {"a", "b", "c", "d"}
    assert (tmp_path / "logs" / "d.log").is_file()
    # Run again: everything exists, nothing runs (the files keep their contents).
    before = {p.name: p.read_text() for p in tmp_path.glob("*.done")}
    again: dict = {}
    run_steps(_steps(tmp_path), jobs=2, out=tmp_path, timings=again)
    assert again == {} and before == {p.name: p.read_text() for p in tmp_path.glob("*.done")}


def test_a_failing_step_names_itself_and_its_log_and_stops_what_needs_it(tmp_path) -> None:
    steps = [
        Step("bad step", (tmp_path / "bad.done",), (), _fail, (tmp_path,)),
        Step("after", (tmp_path / "after.done",), ("bad step",), _write_after, (tmp_path, "after")),
    ]
    with pytest.raises(RuntimeError, match="'bad step' failed.*bad_step.log"):
        run_steps(steps, jobs=2, out=tmp_path, timings={})
    log = (tmp_path / "logs" / "bad_step.log").read_text()
    assert "about to fail" in log and "scripted failure" in log
    assert not (tmp_path / "after.done").exists()


def _write_then_die(folder: Path, threads: int) -> None:
    """A scripted step killed mid-write: part of its output, then SIGKILL of its own worker."""
    folder.mkdir()
    (folder / "part-1").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)


def _write_then_sleep(folder: Path, threads: int) -> None:
    """A scripted step that writes part of its output, tells its pid, then takes its time."""
    folder.mkdir()
    (folder / "part-1").write_text("half")
    (folder.parent / "worker.pid").write_text(str(os.getpid()))
    time.sleep(120)


def _write_whole(folder: Path, threads: int) -> None:
    """The step done right; notes what it found of an earlier attempt (None: nothing)."""
    found = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    folder.mkdir(exist_ok=True)
    (folder / "found.json").write_text(json.dumps(found))


def _slow_plan(out: Path, settings: object) -> tuple[list[Step], dict]:
    """Stands in for reproduce's plan in a subprocess: one step that sleeps mid-write."""
    return [Step("slow", (out / "slow",), (), _write_then_sleep, (out / "slow",))], {}


def _redo_cleanly(out: Path, name: str) -> None:
    """Rerun the step `name` (output folder out/name) and check it started from nothing."""
    marker = out / ".steps" / f"{name}.done"
    assert not marker.exists()
    timings: dict = {}
    run_steps([Step(name, (out / name,), (), _write_whole, (out / name,))], 1, out, timings)
    assert json.loads((out / name / "found.json").read_text()) is None  # the torn output went
    assert set(timings) == {name} and json.loads(marker.read_text())["seconds"] >= 0


def test_a_step_killed_mid_write_is_redone_from_scratch(tmp_path) -> None:
    torn = tmp_path / "torn"
    with pytest.raises(RuntimeError, match="'torn' failed"):
        run_steps([Step("torn", (torn,), (), _write_then_die, (torn,))], 1, tmp_path, {})
    assert (torn / "part-1").exists()
    _redo_cleanly(tmp_path, "torn")
    # Marked done: a third run leaves it alone.
    run_steps([Step("torn", (torn,), (), _write_then_die, (torn,))], 1, tmp_path, {})


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has ended


def _run_until_the_step_sleeps(tmp_path: Path, code: str) -> tuple[subprocess.Popen, int]:
    """Start `code` in a Python subprocess (this folder importable; its output in files, as a
    pipe held by a surviving worker would block reading it) and wait for the scripted step's
    worker to tell its pid."""
    setup = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); OUT = {str(tmp_path)!r}\n"
    )
    with open(tmp_path / "stdout", "wb") as stdout, open(tmp_path / "stderr", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", setup + code], stdout=stdout, stderr=stderr)
    pid_file, deadline = tmp_path / "worker.pid", time.monotonic() + 120
    while not pid_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the step never started: {(tmp_path / 'stderr').read_text()}")
        time.sleep(0.2)
    time.sleep(0.2)  # let the write of the pid finish
    return proc, int(pid_file.read_text())


def _gone_soon(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)  # leave nothing behind, then fail
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_killing_the_run_with_sigkill_kills_its_workers_and_the_rerun_redoes_the_step(
    tmp_path,
) -> None:
    code = (
        "from pathlib import Path\nfrom finecap.reproduce import run_steps\n"
        "import test_reproduce as t\n"
        "run_steps(t._slow_plan(Path(OUT), None)[0], 1, Path(OUT), {})\n"
    )
    proc, worker = _run_until_the_step_sleeps(tmp_path, code)
    proc.kill()
    proc.wait()
    assert _gone_soon(worker, 5), "the worker outlived the killed run"
    assert (tmp_path / "slow" / "part-1").exists()
    _redo_cleanly(tmp_path, "slow")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_sigterm_stops_reproduce_and_its_workers_with_how_to_resume(tmp_path) -> None:
    code = (
        "import finecap.reproduce, test_reproduce as t\nfinecap.reproduce.plan = t._slow_plan\n"
        "from finecap.cli import main\nsys.exit(main(['reproduce', '--out', OUT, '--quick']))\n"
    )
    proc, worker = _run_until_the_step_sleeps(tmp_path, code)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()  # a no-op once it has ended
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        f"finecap reproduce: stopped by SIGTERM; the finished steps in {tmp_path} are kept: "
        "rerun the same command to resume"
    )
    # Killed by the run itself, not by the parent-death signal: gone as the run ends.
    assert _gone_soon(worker, 1), "the worker outlived the stopped run"
    assert not (tmp_path / ".steps" / "slow.done").exists()
    with FolderLock(tmp_path):  # released
        pass


def test_a_second_reproduce_on_a_folder_in_use_exits_2_naming_the_owner(tmp_path, capsys) -> None:
    with FolderLock(tmp_path):
        assert main(["reproduce", "--out", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{tmp_path} is in use by another finecap process (pid {os.getpid()})" in err
    assert not (tmp_path / "scenes").exists() and not (tmp_path / "logs").exists()


def test_quick_reproduce_writes_every_table_and_model(tmp_path, capsys) -> None:
    out = tmp_path / "rq"
    assert main(["reproduce", "--out", str(out), "--quick"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["systems"]) == SYSTEMS
    for name, scores in metrics["systems"].items():
        for metric in ("CIDEr", "CLIP-S", "R@1", "FineCapEval-object", "Repetition", "Facts-R"):
            assert 0.0 <= scores[metric] <= 10.0, (name, metric)
    # Table 4 by the oracle: win + lose + tie = 100 % for each comparison and criterion.
    table4 = json.loads((out / "table4.json").read_text())
    assert list(table4) == ["CLIP-S+Grammar vs MLE", "CLIP-S+Grammar vs CIDEr"]
    for criteria in table4.values():
        assert list(criteria) == ["overall", "background", "object", "attribute", "relation"]
        for shares in criteria.values():
            assert sum(shares.values()) == pytest.approx(100.0)
    # The CLIP's attribute-binding probe comes with it.
    probe = json.loads((out / "clip" / "clip_eval.json").read_text())["probe"]
    assert {"shape", "color", "background"} <= set(probe["kinds"])
    report = (out / "report.html").read_text()
    for title in ("Table 1", "Table 2", "FineCapEval", "Degeneration", "Table 3"):
        assert title in report
    timings = json.loads((out / "timings.json").read_text())
    assert {"scenes world", "scenes CLIP", "grammar head", *SYSTEMS[:-1]} <= set(timings)

    # The models are where the issue says, each usable by its own command.
    from finecap.captioner import Captioner
    from finecap.clip import load_clip

    load_clip(out / "clip")
    capsys.readouterr()
    assert main(["grammar", "score", "--model", str(out / "grammar"), "a red ball"]) == 0
    assert capsys.readouterr().out.strip()
    image = next((out / "scenes" / "images").glob("*.png"))
    for name in SYSTEMS[:-1]:
        Captioner.from_pretrained(out / "captioners" / name / "model")
    model = out / "captioners" / "CLIP-S" / "model"
    assert main(["caption", str(image), "--model", str(model), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["image"] == str(image) and isinstance(line["caption"], str)
