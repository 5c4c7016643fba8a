"""`finecap evaluate` end to end on a small scenes world with a tiny random CLIP, its report,
and its errors (malformed file, unknown id, missing image, incomplete predictions); the same
evaluation called from Python (`finecap.evaluation`)."""

from __future__ import annotations

import json
import re

import pytest

from finecap.cli import main
from finecap.metrics.suite import list_metrics
from helpers.tiny_models import make_tiny_clip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from finecap.scenes import generate_world

    root = tmp_path_factory.mktemp("world")
    dataset = generate_world(root, n=40, val=2, test=10, image_size=32)
    images = json.loads(dataset.read_text())["images"]
    test = [e for e in images if e["split"] == "test"]
    good = [{"image_id": e["imgid"], "caption": e["sentences"][1]["raw"]} for e in test]
    bad = [{"image_id": e["imgid"], "caption": "a ball ball on on the the"} for e in test]
    bad[0]["caption"] = ""  # empty captions are scored as empty
    (root / "good.json").write_text(json.dumps(good))
    (root / "bad.json").write_text(json.dumps(bad))
    return {
        "root": root,
        "dataset": dataset,
        "clip": make_tiny_clip(root),
        "test_ids": [e["imgid"] for e in test],
    }


# Everything but METEOR, whose Java start-up takes ~10 s per system (the official tier's own
# tests cover it).
SELECTED = [
    *("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "SPICE"),
    *(
        "clipscore",
        "retrieval",
        "finecapeval",
        "facts",
        "salience",
        "bertscore",
        "similarity",
        "diversity",
    ),
    "novelty",
]


def _evaluate(world, *extra: str, out=None) -> list[str]:
    out = out or world["root"] / "metrics.json"
    return ["evaluate", "--dataset", str(world["dataset"]), "--out", str(out), *extra]


def test_end_to_end_all_metrics(world, capsys):
    root = world["root"]
    args = _evaluate(
        world,
        "--predictions",
        str(root / "good.json"),
        f"degenerate={root / 'bad.json'}",
        "--clip",
        str(world["clip"]),
        "--finecapeval",
        str(root / "finecapeval.csv"),
        "--reference-row",
        "--refclip-variant",
        "cho",
        "--report",
        str(root / "report.html"),
        "--metrics",
        ",".join(SELECTED),
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    doc = json.loads((root / "metrics.json").read_text())
    assert set(doc) == {
        "systems",
        "unavailable",
        "settings",
        "image_ids",
        "per_image",
        "aggregation",
    }
    assert list(doc["systems"]) == ["good", "degenerate", "Reference"]
    assert doc["image_ids"] == world["test_ids"]
    # every row against the same 4 references: the Reference row holds the first one out
    assert doc["settings"]["references_per_image"] == dict.fromkeys(
        doc["systems"], {"min": 4, "max": 4}
    )
    assert all(len(v) == 10 for v in doc["per_image"]["good"].values())
    assert doc["aggregation"]["CIDEr"] == "mean of per_image"
    assert "summed over images" in doc["aggregation"]["BLEU-4"]
    every = {m for g in list_metrics() for m in g.metrics} - {"METEOR"}
    for name, scores in doc["systems"].items():
        # every registered metric is either scored or listed unavailable with a reason
        assert set(scores) | set(doc["unavailable"]) == every, name
    assert all(isinstance(r, str) and r for r in doc["unavailable"].values())
    good, bad = doc["systems"]["good"], doc["systems"]["degenerate"]
    assert bad["Repetition"] == pytest.approx(0.9) and good["Repetition"] < 0.5
    assert 0 <= good["R@1"] <= good["R@5"] <= good["R@10"] <= 1 and good["MedR"] >= 1
    assert good["FineCapEval-object"] > bad["FineCapEval-object"]
    if "CIDEr" in good:  # pycocoevalcap scale, not x100
        assert 0 < good["CIDEr"] < 10 and 0 <= good["BLEU-4"] <= 1
    settings = doc["settings"]
    assert settings["refclip_variant"] == "cho" and settings["clip"] == str(world["clip"])
    assert settings["split"] == "test" and settings["n_images"] == 10
    assert settings["finecapeval_images"] == 10

    # the terminal table: systems as rows, x100
    header = next(line for line in out.splitlines() if line.startswith("system"))
    row = next(line for line in out.splitlines() if line.startswith("degenerate"))
    rep_col = header.split().index("Repetition")
    assert row.split()[rep_col] == "90.0"

    html = (root / "report.html").read_text()
    assert "<table class='metrics'>" in html and "RefCLIP-S" in html
    assert len(re.findall(r"src='data:image/jpeg;base64,", html)) == 10
    assert "degenerate" in html and "<i>(empty)</i>" in html


def test_list_metrics(capsys):
    assert main(["evaluate", "--list-metrics"]) == 0
    assert "clipscore" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"image_id": 1}', "expected a list"),
        ('[{"image_id": 1}]', 'missing key "caption"'),
        (
            '[{"image_id": 999999, "caption": "x"}]',
            "image_id 999999 is not an image of the dataset",
        ),
    ],
)
def test_bad_predictions_files(world, tmp_path, capsys, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    assert main(_evaluate(world, "--predictions", str(path), "--metrics", "diversity")) == 2
    err = capsys.readouterr().err
    assert message in err and "p.json" in err


def test_incomplete_predictions(world, tmp_path, capsys):
    ids = world["test_ids"]
    path = tmp_path / "part.json"
    path.write_text(json.dumps([{"image_id": i, "caption": "a ball"} for i in ids[:7]]))
    assert main(_evaluate(world, "--predictions", str(path), "--metrics", "diversity")) == 2
    err = capsys.readouterr().err
    assert f"3 of 10 test images have no caption (image_id {ids[7]}, {ids[8]}, {ids[9]})" in err
    out = tmp_path / "m.json"
    args = ["--predictions", str(path), "--metrics", "diversity", "--allow-missing"]
    assert main(_evaluate(world, *args, out=out)) == 0
    assert json.loads(out.read_text())["settings"]["n_images"] == 7


def test_missing_image_names_the_file(world, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(world["root"] / "images", root / "images")
    (root / "images" / "scene_000039.png").unlink()
    args = _evaluate(world, "--predictions", str(world["root"] / "good.json"))
    args += ["--images", str(root), "--clip", str(world["clip"]), "--metrics", "CLIP-S"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 image files not found (image_id 39: " in err and "scene_000039.png" in err


def test_unknown_metric_and_split(world, capsys):
    pred = str(world["root"] / "good.json")
    assert main(_evaluate(world, "--predictions", pred, "--metrics", "BLEU-9")) == 2
    assert "unknown metric or group 'BLEU-9'" in capsys.readouterr().err
    assert main(_evaluate(world, "--predictions", pred, "--split", "dev")) == 2
    assert "unknown split 'dev'" in capsys.readouterr().err


def test_required_options_are_named(capsys):
    assert main(["evaluate", "--split", "test"]) == 2
    assert "--predictions, --dataset required" in capsys.readouterr().err


def test_without_out_the_table_is_printed_and_nothing_written(world, tmp_path, capsys):
    pred = str(world["root"] / "good.json")
    args = ["evaluate", "--predictions", pred, "--dataset", str(world["dataset"])]
    before = sorted(p.name for p in world["root"].iterdir())
    assert main([*args, "--metrics", "BLEU-4"]) == 0
    out = capsys.readouterr().out
    assert "BLEU-4" in out and "metrics:" not in out
    assert sorted(p.name for p in world["root"].iterdir()) == before


def test_missing_predictions_file(world, tmp_path, capsys):
    absent = str(tmp_path / "absent.json")
    assert main(_evaluate(world, "--predictions", absent, "--metrics", "diversity")) == 2
    err = capsys.readouterr().err
    assert err.startswith("finecap evaluate: error: ") and "absent.json: no such file" in err


def test_library_call_gives_the_numbers_of_the_command(world, tmp_path, capsys):
    """`finecap.evaluation.evaluate` from Python (a mapping of systems, `Path`s, a metric list)
    is what the command runs: the same metrics.json, bit for bit."""
    from finecap.evaluation import EvaluationConfig, evaluate, write_results

    root, metrics = world["root"], ["BLEU-4", "CIDEr", "clipscore", "diversity"]
    cli_out = tmp_path / "cli.json"
    args = ["--predictions", str(root / "good.json"), f"degenerate={root / 'bad.json'}"]
    args += ["--clip", str(world["clip"]), "--reference-row", "--metrics", ",".join(metrics)]
    assert main(_evaluate(world, *args, out=cli_out)) == 0
    capsys.readouterr()

    config = EvaluationConfig(
        predictions={"good": root / "good.json", "degenerate": root / "bad.json"},
        dataset=world["dataset"],
        clip=world["clip"],
        reference_row=True,
        metrics=metrics,
    )
    evaluation = evaluate(config)
    assert capsys.readouterr().out == ""  # notes go to `log`, not stdout
    assert [s.name for s in evaluation.systems] == ["good", "degenerate", "Reference"]
    assert evaluation.data.image_ids == world["test_ids"]
    doc = json.loads(cli_out.read_text())
    assert json.loads(json.dumps(evaluation.to_json())) == doc
    assert {"CIDEr", "CLIP-S", "Repetition"} <= set(evaluation.result.systems["good"])

    lib_out = tmp_path / "lib.json"
    write_results(evaluation, lib_out, report=tmp_path / "r.html", report_samples=2)
    assert json.loads(lib_out.read_text()) == doc
    assert len(re.findall(r"src='data:image/jpeg;base64,", (tmp_path / "r.html").read_text())) == 2


def test_library_errors_are_user_errors(world, tmp_path):
    from finecap.config import ConfigError
    from finecap.errors import UserError
    from finecap.evaluation import EvaluationConfig, InputError, evaluate

    pred = str(world["root"] / "good.json")
    config = EvaluationConfig(predictions=[pred], dataset=str(tmp_path / "none.json"))
    with pytest.raises(UserError, match="none.json: no such file"):
        evaluate(config)
    assert issubclass(InputError, UserError)
    with pytest.raises(ConfigError, match="refclip_variant"):
        EvaluationConfig.load({"predictions": [pred], "dataset": "d", "refclip_variant": "x"})
    config = EvaluationConfig(predictions=pred, dataset=world["dataset"], metrics="BLEU-9,cider")
    assert config.predictions == [pred] and config.metrics == ["BLEU-9", "cider"]
    with pytest.raises(InputError, match="unknown metric or group 'BLEU-9'"):
        evaluate(config)


def _no_scoring(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("scored although the outputs were refused")

    monkeypatch.setattr("finecap.evaluation.evaluate", refuse)


@pytest.mark.parametrize("flag", ["--out", "--report"])
@pytest.mark.parametrize("target", ["predictions", "dataset", "dataset folder", "finecapeval"])
def test_outputs_that_are_inputs_are_refused_before_scoring(
    world, tmp_path, capsys, monkeypatch, flag, target
):
    import shutil

    copy = tmp_path / "world"
    copy.mkdir()
    for name in ("dataset.json", "finecapeval.csv", "good.json"):
        shutil.copy(world["root"] / name, copy / name)
    dataset = copy / "dataset.json"
    inputs = {"predictions": copy / "good.json", "finecapeval": copy / "finecapeval.csv"}
    inputs |= {"dataset": dataset, "dataset folder": dataset}
    before = {path: path.read_bytes() for path in inputs.values()}
    given = str(copy) if target == "dataset folder" else str(dataset)
    args = ["evaluate", "--predictions", str(copy / "good.json"), "--dataset", given]
    args += ["--finecapeval", str(copy / "finecapeval.csv"), "--metrics", "diversity"]
    args += ["--out", str(tmp_path / "m.json")]
    # another spelling of the same file: relative to a different folder
    args += [flag, str(copy / ".." / "world" / inputs[target].name)]
    _no_scoring(monkeypatch)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("finecap evaluate: error: ")
    assert f"{flag} " in err and "is an input" in err and inputs[target].name in err
    assert all(path.read_bytes() == data for path, data in before.items())


def test_out_that_is_a_folder_or_the_report_is_refused_before_scoring(
    world, tmp_path, capsys, monkeypatch
):
    pred = str(world["root"] / "good.json")
    _no_scoring(monkeypatch)
    for extra, message in [
        ([], f"--out {tmp_path}: is a folder"),
        (["--report", str(tmp_path / "m.json")], "--out and --report name the same file"),
    ]:
        out = tmp_path if not extra else tmp_path / "m.json"
        assert main(_evaluate(world, "--predictions", pred, *extra, out=out)) == 2
        assert message in capsys.readouterr().err
    report_dir = tmp_path / "r"
    report_dir.mkdir()
    args = _evaluate(world, "--predictions", pred, "--report", str(report_dir), out=tmp_path / "x")
    assert main(args) == 2
    assert f"--report {report_dir}: is a folder" in capsys.readouterr().err


def test_image_paths_outside_the_root_are_refused(world, tmp_path, capsys):
    """A dataset whose images folder is a symlink to elsewhere: refused (nothing read or
    embedded) unless --allow-outside-root."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text(world["dataset"].read_text())
    (data / "images").symlink_to(world["root"] / "images", target_is_directory=True)
    report, out = tmp_path / "report.html", tmp_path / "m.json"
    args = ["evaluate", "--predictions", str(world["root"] / "good.json"), "--dataset", str(data)]
    args += ["--metrics", "diversity", "--out", str(out), "--report", str(report)]
    assert main(args) == 2
    err = capsys.readouterr().err
    first = world["test_ids"][0]
    assert err.count("\n") == 1 and f"{data / 'dataset.json'}: image_id {first}: " in err
    assert "goes through a symlink to" in err and "--allow-outside-root" in err
    assert not report.exists() and not out.exists()
    assert main([*args, "--allow-outside-root"]) == 0
    assert len(re.findall(r"src='data:image/jpeg;base64,", report.read_text())) == 10


def test_lone_surrogate_in_predictions_is_refused(world, tmp_path, capsys):
    path = tmp_path / "p.json"
    first = world["test_ids"][0]
    path.write_text(f'[{{"image_id": {first}, "caption": "a \\ud800 ball"}}]')
    assert main(_evaluate(world, "--predictions", str(path), "--metrics", "BLEU-4")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert f'p.json: [0] (image_id {first}): "caption" holds a lone surrogate (\\ud800' in err
    # called from Python with such text, the official tier refuses it before Java starts
    from finecap.metrics.official import official_scores

    with pytest.raises(ValueError, match=r"image_id 2: the reference 'x\\udc80' is not UTF-8"):
        official_scores({1: ["a ball"], 2: ["x\udc80"]}, {1: "a ball", 2: "a box"})
