"""`finecap reproduce`: the step scheduler (needs, resume, failures) on scripted steps, and the
whole `--quick` pipeline end to end with the contract of its output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finecap.captioner import Captioner
from finecap.cli import main
from finecap.clip import load_clip
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
        return Step(name, folder / f"{name}.done", needs, _write_after, (folder, name))

    return [step("d", ("b", "c")), step("a", ()), step("b", ("a",)), step("c", ("a",))]


def test_steps_run_after_what_they_need_and_done_steps_are_skipped(tmp_path) -> None:
    timings: dict = {}
    run_steps(_steps(tmp_path), jobs=2, logs=tmp_path / "logs", timings=timings)
    seen = {p.stem: json.loads(p.read_text())["seen"] for p in tmp_path.glob("*.done")}
    assert seen["a"] == []
    assert "a" in seen["b"] and "a" in seen["c"]
    assert {"a", "b", "c"} <= set(seen["d"])
    assert set(timings) == {"a", "b", "c", "d"}
    assert (tmp_path / "logs" / "d.log").is_file()
    # Run again: everything exists, nothing runs (the files keep their contents).
    before = {p.name: p.read_text() for p in tmp_path.glob("*.done")}
    again: dict = {}
    run_steps(_steps(tmp_path), jobs=2, logs=tmp_path / "logs", timings=again)
    assert again == {} and before == {p.name: p.read_text() for p in tmp_path.glob("*.done")}


def test_a_failing_step_names_itself_and_its_log_and_stops_what_needs_it(tmp_path) -> None:
    steps = [
        Step("bad step", tmp_path / "bad.done", (), _fail, (tmp_path,)),
        Step("after", tmp_path / "after.done", ("bad step",), _write_after, (tmp_path, "after")),
    ]
    with pytest.raises(RuntimeError, match="'bad step' failed.*bad_step.log"):
        run_steps(steps, jobs=2, logs=tmp_path / "logs", timings={})
    log = (tmp_path / "logs" / "bad_step.log").read_text()
    assert "about to fail" in log and "scripted failure" in log
    assert not (tmp_path / "after.done").exists()


def test_quick_reproduce_writes_every_table_and_model(tmp_path, capsys) -> None:
    out = tmp_path / "rq"
    assert main(["reproduce", "--out", str(out), "--quick"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["systems"]) == SYSTEMS
    for name, scores in metrics["systems"].items():
        for metric in ("CIDEr", "CLIP-S", "R@1", "FineCapEval-object", "Repetition"):
            assert 0.0 <= scores[metric] <= 10.0, (name, metric)
    report = (out / "report.html").read_text()
    for title in ("Table 1", "Table 2", "FineCapEval", "Degeneration", "Table 3"):
        assert title in report
    timings = json.loads((out / "timings.json").read_text())
    assert {"scenes world", "scenes CLIP", "grammar head", *SYSTEMS[:-1]} <= set(timings)

    # The models are where the issue says, each usable by its own command.
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
