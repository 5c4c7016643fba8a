"""The HTML report (`finecap.report`, `finecap.report_plots`): best values marked by each
metric's direction, figures only when their metrics exist, training curves from CSVLogger
files, per-image scores in the samples, the layout chosen by the number of systems; and in
headless Chromium, that the figures load and a wide table scrolls inside its box."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from finecap.errors import MissingFileError
from finecap.metrics.suite import SuiteResult, list_metrics, register_metric
from finecap.report import ReportSample, best_systems, pick_samples, render_report
from finecap.report_plots import (
    MetricLogError,
    curves_figure,
    read_metric_log,
    report_figures,
    run_metric_logs,
)

UNSCALED = frozenset(m for g in list_metrics() for m in g.unscaled)
PNG = re.compile(r"<img src='data:image/png;base64,[A-Za-z0-9+/=]+' alt='([^']*)'>")


def _result(systems: dict[str, dict[str, float]]) -> SuiteResult:
    return SuiteResult(systems, {}, {"n_images": 2}, {}, UNSCALED)


def _figure_ids(html: str) -> list[str]:
    return re.findall(r"<figure id='([^']+)'>", html)


def test_best_value_per_column_follows_the_metric_direction():
    result = _result({
        "A": {"CIDEr": 0.90, "MedR": 3.0, "CHAIR-i": 0.20, "Repetition": 0.1, "Mean-Length": 9},
        "B": {"CIDEr": 1.10, "MedR": 2.0, "CHAIR-i": 0.30, "Repetition": 0.5, "Mean-Length": 12},
        "C": {"CIDEr": 1.10, "MedR": 5.0, "CHAIR-i": 0.25, "Repetition": 0.1},
    })  # fmt: skip
    assert best_systems(result, "CIDEr") == {"B", "C"}  # a tie marks both
    assert best_systems(result, "MedR") == {"B"}  # lower is better
    assert best_systems(result, "CHAIR-i") == {"A"}
    assert best_systems(result, "Repetition") == {"A", "C"}
    assert best_systems(result, "Mean-Length") == set()  # neither direction is better
    assert best_systems(_result({"A": {"CIDEr": 1.0}, "B": {"CIDEr": 1.0}}), "CIDEr") == set()
    html = render_report(result, [], paper_tables=False)
    assert "<td class='best'>110.0</td>" in html and "<td class='best'>2.0</td>" in html
    assert html.count("<td class='best'>") == 2 + 1 + 1 + 2
    assert "<div class='table-scroll'><table class='metrics'>" in html


def test_register_metric_refuses_directions_of_other_metrics():
    with pytest.raises(ValueError, match=r"\['Y'\] are not metrics of group 'x'"):
        register_metric("x", ("X",), lower_is_better=("Y",))


def test_figures_only_for_metrics_present():
    assert report_figures(_result({"A": {"BLEU-4": 0.3}, "B": {"BLEU-4": 0.2}})) == []
    both = {"CIDEr": 1.0, "R@1": 0.4, "FineCapEval-object": 0.5, "Facts-R/color": 0.7}
    result = _result({"A": both, "B": {"CIDEr": 0.8, "R@1": 0.6}})
    figures = report_figures(result)
    assert [f.id for f in figures] == ["figure-tradeoff", "figure-finecapeval", "figure-facts"]
    assert all(f.uri.startswith("data:image/png;base64,") for f in figures)
    html = render_report(result, [])
    assert _figure_ids(html) == [f.id for f in figures] and len(PNG.findall(html)) == 3


def _metrics_csv(path, header: str, rows: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_training_curves_from_csv_logs(tmp_path):
    run = tmp_path / "scst" / "run"
    header = "epoch,step,train/advantage_abs,train/reward,val/CIDEr"
    _metrics_csv(run / "logs/version_0/metrics.csv", header, ["0,9,0.1,0.5,", "0,19,,,1.2"])
    _metrics_csv(run / "logs/version_10/metrics.csv", header, ["1,29,0.1,0.7,"])  # resumed
    _metrics_csv(run / "logs/version_2/metrics.csv", header, ["0,24,0.1,0.6,"])
    (run / "logs/version_x").mkdir()  # not a CSVLogger version: ignored
    logs = run_metric_logs(run)
    assert [p.parent.name for p in logs] == ["version_0", "version_2", "version_10"]
    assert read_metric_log(logs) == {
        "train/reward": [(9, 0.5), (24, 0.6), (29, 0.7)],
        "val/CIDEr": [(19, 1.2)],
    }
    assert run_metric_logs(tmp_path / "none") == []
    mle = _metrics_csv(tmp_path / "mle.csv", "epoch,step,train/xe,val/CIDEr", ["0,9,4.0,"])
    curves = {"SCST": logs, "MLE": [mle]}
    result = _result({"MLE": {"CIDEr": 1.0}, "SCST": {"CIDEr": 1.1}})
    html = render_report(result, [], curves=curves)
    assert _figure_ids(html) == ["figure-curves"]
    assert curves_figure({"MLE": []}) is None  # nothing logged: no figure

    with pytest.raises(MissingFileError, match="gone.csv: no such training log"):
        read_metric_log([tmp_path / "gone.csv"])
    bad = _metrics_csv(tmp_path / "bad.csv", "epoch,train/xe", ["0,1.0"])
    with pytest.raises(MetricLogError, match="bad.csv: no 'step' column"):
        read_metric_log([bad])
    bad = _metrics_csv(tmp_path / "nan.csv", "epoch,step,train/xe", ["0,9,x"])
    with pytest.raises(MetricLogError, match="nan.csv: line 2: a value is not a number"):
        read_metric_log([bad])


def test_per_image_scores_in_the_samples():
    per_image = {"A": {"CIDEr": [0.5, 1.25, 0.0], "FineCapEval-object": [None, 0.5, 1.0]}}
    samples = pick_samples(
        [7, 8, 9], None, [["r1"], ["r2"], ["r3"]], {"A": ["a", "b", "c"], "B": ["x", "y", "z"]},
        n=3, per_image=per_image,
    )  # fmt: skip
    assert samples[1].scores == {"A": {"CIDEr": 1.25, "FineCapEval-object": 0.5}}
    result = _result({"A": {"CIDEr": 1.0}, "B": {"CIDEr": 0.9}})
    html = render_report(result, samples)
    assert "<span class='scores'>CIDEr 50.0 · FineCapEval-object -</span>" in html
    assert "<span class='scores'>CIDEr 125.0 · FineCapEval-object 50.0</span>" in html
    assert html.count("<span class='scores'>") == 3  # B has none: no scores shown
    assert "<span class='scores'>" not in render_report(result, pick_samples(
        [7], None, [["r"]], {"A": ["a"]}, n=1))  # fmt: skip


def test_paper_tables_are_the_default_with_several_systems():
    one = _result({"A": {"CIDEr": 1.0, "Repetition": 0.2}})
    two = _result({"A": {"CIDEr": 1.0, "Repetition": 0.2}, "B": {"CIDEr": 0.9}})
    sample = [ReportSample(1, None, ["r"], {"A": "a"})]
    assert "<h2>Table 1: " not in render_report(one, sample)
    assert "<h2>Table 1: " in render_report(two, sample)
    assert "Table 3: examples" in render_report(two, sample)
    assert "<h2>Table 1: " not in render_report(two, sample, paper_tables=False)
    assert "<h2>Table 1: " in render_report(one, sample, paper_tables=True)


# --------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def report_world(tmp_path_factory):
    """A generated report: a small scenes world, two systems, a tiny CLIP, training logs."""
    from finecap.cli import main
    from finecap.scenes import generate_world
    from helpers.tiny_models import make_tiny_clip

    root = tmp_path_factory.mktemp("report")
    dataset = generate_world(root, n=30, val=2, test=8, image_size=32)
    test = [e for e in json.loads(dataset.read_text())["images"] if e["split"] == "test"]
    for name, k in (("first", 0), ("second", 1)):
        preds = [{"image_id": e["imgid"], "caption": e["sentences"][k]["raw"]} for e in test]
        (root / f"{name}.json").write_text(json.dumps(preds))
    metrics = "CIDEr,retrieval,finecapeval,facts,diversity"
    args = ["evaluate", "--dataset", str(dataset), "--clip", str(make_tiny_clip(root))]
    args += ["--predictions", str(root / "first.json"), str(root / "second.json")]
    args += ["--finecapeval", str(root / "finecapeval.csv"), "--metrics", metrics]
    args += ["--report", str(root / "single.html"), "--single-table", "--report-samples", "3"]
    assert main(args) == 0
    return root


def _chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chromium() is None, reason="needs Debian chromium + chromium-driver")
def test_report_in_headless_chromium(report_world, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs pip selenium")
    from selenium.webdriver.common.by import By

    page = report_world / "single.html"
    html = page.read_text()
    assert _figure_ids(html) == ["figure-tradeoff", "figure-finecapeval", "figure-facts"]
    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--window-size=1000,800",
                 f"--user-data-dir={tmp_path / 'profile'}"]:  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    try:
        driver.get(page.as_uri())
        plots = driver.find_elements(By.CSS_SELECTOR, "figure img")
        assert len(plots) == 3
        for img in plots:  # decoded PNGs, shown no wider than the page
            assert driver.execute_script("return arguments[0].complete", img)
            assert driver.execute_script("return arguments[0].naturalWidth", img) > 0
            assert img.size["width"] <= driver.execute_script("return innerWidth")
        box = driver.find_element(By.CSS_SELECTOR, ".table-scroll")
        scroll_w, client_w = (driver.execute_script(f"return arguments[0].{p}", box)
                              for p in ("scrollWidth", "clientWidth"))  # fmt: skip
        assert scroll_w > client_w  # the ~30 columns scroll inside their box ...
        assert driver.execute_script(  # ... and the page itself does not overflow
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        # The system column stays in view when the table is scrolled to its end.
        name = driver.find_element(By.CSS_SELECTOR, "table.metrics td.name")
        left = name.location["x"]
        driver.execute_script("arguments[0].scrollLeft = arguments[0].scrollWidth", box)
        assert driver.execute_script("return arguments[0].scrollLeft", box) > 0
        assert driver.execute_script(
            "return arguments[0].getBoundingClientRect().left", name
        ) == pytest.approx(left, abs=1)
        assert driver.find_elements(By.CSS_SELECTOR, "td.best")
    finally:
        driver.quit()
