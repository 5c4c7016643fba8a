"""`finecap reproduce`: Cho et al. (2022) and Chaffin et al. (2022) on the scenes world.

Steps, each the project's own command, so the pipeline is what a user would run by hand:
 1. generate the scenes world                     -> DIR/scenes/
 2. train the scenes CLIP (Hugging Face format)   -> DIR/clip/
 3. train the grammar head                        -> DIR/grammar/
 4. MLE captioner                                 -> DIR/captioners/MLE/
 5. SCST from the MLE model, one run per reward   -> DIR/captioners/NAME/
 6. caption the test split with every captioner   -> DIR/predictions/NAME.json
 7. `finecap evaluate` on all systems (+ Reference) -> DIR/metrics.json, DIR/report.html
A step whose output already exists is skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from finecap.captioner import Captioner
from finecap.cli import main as finecap
from finecap.data.formats import load_corpus, save_predictions
from finecap.data.images import load_image
from finecap.train.config import load_config
from finecap.train.run import train

CONFIGS = Path(__file__).parent / "configs"

# System name in metrics.json -> SCST recipe (Cho et al. rows, then Chaffin et al. variants).
SCST_SYSTEMS = {
    "CIDEr": "scst_scenes_cider.yaml",
    "CLIP-S": "scst_scenes_clip_s.yaml",
    "CIDEr+CLIP-S": "scst_scenes_cider_clip_s.yaml",
    "CLIP-S+Grammar": "scst_scenes_clip_s_grammar.yaml",
    "Contrastive": "scst_scenes_contrastive.yaml",
    "Contrastive+Disc": "scst_scenes_contrastive_disc.yaml",
    "Contrastive+GT": "scst_scenes_contrastive_gt.yaml",
}


@dataclass
class ReproduceSettings:
    images: int = 5000
    clip_args: list[str] = field(default_factory=list)
    grammar_args: list[str] = field(default_factory=list)
    mle_overrides: list[str] = field(default_factory=list)
    scst_overrides: list[str] = field(default_factory=list)


FULL = ReproduceSettings()
QUICK = ReproduceSettings(
    images=300,
    clip_args=["--epochs", "3", "--hidden", "64", "--layers", "2"],
    grammar_args=["--epochs", "1"],
    mle_overrides=["optim.max_epochs=3", "model.encoder.width=64", "model.decoder.hidden_size=128"],
    scst_overrides=["optim.max_epochs=1", "data.batch_size=10", "data.val_images=20"],
)


def _step(name: str, done: Path) -> bool:
    """Print the step; False when its output exists already (resume)."""
    if done.exists():
        print(f"[reproduce] {name}: done already ({done})")
        return False
    print(f"[reproduce] {name} ...", flush=True)
    return True


def _run(argv: list[str]) -> None:
    status = finecap(argv)
    if status:
        raise RuntimeError(f"`finecap {' '.join(argv)}` failed with status {status}")


def _train_captioner(
    recipe: str, out: Path, overrides: list[str], init: Path | None, paths: dict
) -> Path:
    config = load_config(CONFIGS / recipe, [f"output_dir={out / 'run'}", *overrides])
    config.data.dataset = str(paths["dataset"])
    for term in config.scst.get("rewards", []):  # point reward models at this run's own
        if "clip" in term:
            term["clip"] = str(paths["clip"])
        if "model" in term:
            term["model"] = str(paths["grammar"])
    exported = train(config, init=init)
    shutil.copytree(exported, out / "model")
    return out / "model"


def caption_split(model_dir: Path, dataset: Path, split: str, out: Path) -> None:
    captioner = Captioner.from_pretrained(model_dir)
    corpus = load_corpus(dataset)
    records = corpus.split(split)
    images = [load_image(corpus.image_path(r)) for r in records]
    captions = captioner.caption(images, beam_size=3, batch_size=50)
    save_predictions(out, {r.image_id: c.text for r, c in zip(records, captions, strict=True)})


def reproduce(out: Path, settings: ReproduceSettings) -> Path:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    scenes, clip, grammar = out / "scenes", out / "clip", out / "grammar"
    paths = {"dataset": scenes / "dataset.json", "clip": clip, "grammar": grammar}
    if _step("scenes world", paths["dataset"]):
        _run(
            ["scenes", "generate", "--out", str(scenes), "--n", str(settings.images), "--seed", "0"]
        )
    if _step("scenes CLIP", clip / "config.json"):
        _run(
            [
                "clip",
                "train",
                "--dataset",
                str(paths["dataset"]),
                "--out",
                str(clip),
                *settings.clip_args,
            ]
        )
    if _step("grammar head", grammar / "grammar_config.json"):
        _run(["grammar", "train", "--clip", str(clip), "--dataset", str(paths["dataset"]),
              "--out", str(grammar), *settings.grammar_args])  # fmt: skip
    captioners = out / "captioners"
    mle = captioners / "MLE"
    if _step("MLE captioner", mle / "model"):
        _train_captioner("scenes_lstm.yaml", mle, settings.mle_overrides, None, paths)
    for name, recipe in SCST_SYSTEMS.items():
        if _step(f"SCST {name}", captioners / name / "model"):
            _train_captioner(
                recipe, captioners / name, settings.scst_overrides, mle / "model", paths
            )
    predictions = out / "predictions"
    systems = ["MLE", *SCST_SYSTEMS]
    for name in systems:
        if _step(f"captions of {name}", predictions / f"{name}.json"):
            predictions.mkdir(exist_ok=True)
            caption_split(
                captioners / name / "model", paths["dataset"], "test", predictions / f"{name}.json"
            )
    print("[reproduce] evaluate ...", flush=True)
    _run([
        "evaluate", "--predictions", *[f"{n}={predictions / f'{n}.json'}" for n in systems],
        "--dataset", str(paths["dataset"]), "--split", "test", "--clip", str(clip),
        "--finecapeval", str(scenes / "finecapeval.csv"), "--reference-row",
        "--out", str(out / "metrics.json"), "--report", str(out / "report.html"),
    ])  # fmt: skip
    print(f"[reproduce] finished in {time.perf_counter() - started:.0f} s: {out / 'metrics.json'}")
    return out / "metrics.json"
