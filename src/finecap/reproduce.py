"""`finecap reproduce`: Cho et al. (2022) and Chaffin et al. (2022) on the scenes world.

Steps, each a library call a user could make from Python (or the matching command):
 1. generate the scenes world (`write_world`)                 -> DIR/scenes/
 2. train the scenes CLIP (`train_clip`, Hugging Face format)  -> DIR/clip/
 3. train the grammar head (`train_grammar`)                   -> DIR/grammar/
 4. MLE captioner (transformer decoder, `train`)               -> DIR/captioners/MLE/
 5. SCST from the MLE model, one run per reward (`SYSTEMS`)    -> DIR/captioners/NAME/
    (each captioner then captions the test split               -> DIR/predictions/NAME.json)
 6. the evaluation suite on all systems (+ Reference)          -> DIR/metrics.json, report.html
Steps run as soon as what they need exists, `jobs` (default 2) at a time in worker processes,
each logging to DIR/logs/STEP.log; the seconds of each land in DIR/timings.json. A step whose
output already exists is skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finecap.captioner import Captioner
from finecap.clip.config import ClipTrainConfig, GrammarTrainConfig, ScenesClipConfig
from finecap.clip.grammar import train_grammar
from finecap.clip.train import train_clip
from finecap.config import Settings, merge
from finecap.data.formats import load_corpus, save_predictions
from finecap.data.images import load_image
from finecap.evaluation import EvaluationConfig, evaluate, write_results
from finecap.io import atomic_write_text
from finecap.report import format_table
from finecap.rewards.clip_rewards import ClipRewardConfig
from finecap.rewards.grammar import GrammarRewardConfig
from finecap.scenes.generate import WorldConfig, write_world
from finecap.train.config import TrainConfig, load_config
from finecap.train.run import train

CLIP, GRAMMAR, MLE = "scenes CLIP", "grammar head", "MLE"


@dataclass(frozen=True)
class System:
    """One SCST row: its name in metrics.json, its recipe, and the steps it needs."""

    name: str
    recipe: str
    needs: tuple[str, ...]


# Cho et al. rows, then Chaffin et al. variants, in the tables' order.
SYSTEMS = [
    System("CIDEr", "scst_scenes_cider", (MLE,)),
    System("CLIP-S", "scst_scenes_clip_s", (MLE, CLIP)),
    System("CIDEr+CLIP-S", "scst_scenes_cider_clip_s", (MLE, CLIP)),
    System("CLIP-S+Grammar", "scst_scenes_clip_s_grammar", (MLE, CLIP, GRAMMAR)),
    System("Contrastive", "scst_scenes_contrastive", (MLE, CLIP)),
    System("Contrastive+Disc", "scst_scenes_contrastive_disc", (MLE, CLIP)),
    System("Contrastive+GT", "scst_scenes_contrastive_gt", (MLE, CLIP)),
]
SCST_SYSTEMS = [s.name for s in SYSTEMS]
# SCST rows start longest first (as measured), so the two workers end close together.
RUN_ORDER = [
    "Contrastive+GT", "Contrastive+Disc", "CLIP-S+Grammar", "CLIP-S", "CIDEr+CLIP-S",
    "Contrastive", "CIDEr",
]  # fmt: skip
MLE_RECIPE = "scenes_transformer"


class ReproduceSettings(Settings):
    """What a reproduce run trains. `mle` and `scst` are recipe changes (nested mappings,
    merged into the recipes and checked with them)."""

    world: WorldConfig = WorldConfig(n=5000, seed=0)
    clip_arch: ScenesClipConfig = ScenesClipConfig()
    clip: ClipTrainConfig = ClipTrainConfig()
    grammar: GrammarTrainConfig = GrammarTrainConfig()
    mle: dict[str, Any] = {}
    scst: dict[str, Any] = {}


# The MLE captioner is the default model's recipe (scenes_transformer: a transformer decoder,
# as in Cho et al.), 12 epochs on this run's 5,000-image world. So that the whole run fits in
# 45 minutes on 2 cores, the CLIP trains 10 epochs (12 by default) and the grammar head 3 (6
# by default): CLIP -> grammar head -> CLIP-S+Grammar is the run's longest chain.
FULL = ReproduceSettings(
    clip=ClipTrainConfig(epochs=10),
    grammar=GrammarTrainConfig(epochs=3),
    mle={"optim": {"max_epochs": 12}},
    scst={"data": {"val_images": 100}},
)
QUICK = ReproduceSettings(
    world=WorldConfig(n=300, seed=0),
    clip_arch=ScenesClipConfig(hidden=64, layers=2),
    clip=ClipTrainConfig(epochs=3),
    grammar=GrammarTrainConfig(epochs=1),
    mle={
        "optim": {"max_epochs": 3},
        "model": {"encoder": {"width": 64}, "decoder": {"hidden_size": 128}},
    },
    scst={"optim": {"max_epochs": 1}, "data": {"batch_size": 10, "val_images": 20}},
)


def captioner_config(
    recipe: str, out: Path, changes: dict, paths: dict, threads: int
) -> TrainConfig:
    """A recipe with this run's changes, dataset and threads, its reward models pointed at
    this run's own CLIP and grammar head (by the type of each reward term's settings)."""
    run = {"output_dir": str(out / "run"), "data": {"dataset": str(paths["dataset"])}}
    run["trainer"] = {"threads": threads}
    config = load_config(recipe, **merge(changes, run))
    for term in config.scst.rewards if config.scst else ():
        if isinstance(term, ClipRewardConfig):
            term.clip = str(paths["clip"])
        if isinstance(term, GrammarRewardConfig):
            term.model = str(paths["grammar"])
    return config


def _train_captioner(config: TrainConfig, out: Path, init: Path | None) -> Path:
    exported = train(config, init=init)
    partial = out / "model.partial"  # renamed when complete: an interrupted copy is redone
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(exported, partial)
    partial.rename(out / "model")
    return out / "model"


def caption_split(model_dir: Path, dataset: Path, split: str, out: Path) -> None:
    captioner = Captioner.from_pretrained(model_dir)
    corpus = load_corpus(dataset)
    records = corpus.split(split)
    images = [load_image(corpus.image_path(r)) for r in records]
    captions = captioner.caption(images, beam_size=3, batch_size=50)
    save_predictions(out, {r.image_id: c.text for r, c in zip(records, captions, strict=True)})


@dataclass
class Step:
    """One unit of the pipeline: `run(*args)` makes `done` (its existence = finished)."""

    name: str
    done: Path
    needs: tuple[str, ...]
    run: Callable[..., None]
    args: tuple = ()


def _scenes(paths: dict, settings: ReproduceSettings, threads: int) -> None:
    write_world(settings.world, paths["dataset"].parent, progress=False)


def _clip(paths: dict, settings: ReproduceSettings, threads: int) -> None:
    train_clip(paths["dataset"], paths["clip"], settings.clip_arch, settings.clip)


def _grammar(paths: dict, settings: ReproduceSettings, threads: int) -> None:
    train_grammar(paths["clip"], paths["dataset"], paths["grammar"], settings.grammar)


def _captioner(
    name: str, recipe: str, init: Path | None, changes: dict, paths: dict, threads: int
) -> None:
    """Train one captioner (unless its model exists), then caption the test split with it."""
    folder = paths["captioners"] / name
    if not (folder / "model").exists():
        config = captioner_config(recipe, folder, changes, paths, threads)
        _train_captioner(config, folder, init)
    torch.set_num_threads(threads)
    caption_split(folder / "model", paths["dataset"], "test", paths["predictions"] / f"{name}.json")


def plan(out: Path, settings: ReproduceSettings) -> tuple[list[Step], dict]:
    """Every step with what it needs; the MLE model and the CLIP train side by side."""
    paths = {
        "dataset": out / "scenes" / "dataset.json",
        "clip": out / "clip",
        "grammar": out / "grammar",
        "captioners": out / "captioners",
        "predictions": out / "predictions",
    }
    mle = paths["captioners"] / MLE / "model"
    steps = [
        Step("scenes world", paths["dataset"], (), _scenes, (paths, settings)),
        Step(CLIP, paths["clip"] / "config.json", ("scenes world",), _clip, (paths, settings)),
        Step(MLE, paths["predictions"] / "MLE.json", ("scenes world",), _captioner,
             (MLE, MLE_RECIPE, None, settings.mle, paths)),
        Step(GRAMMAR, paths["grammar"] / "grammar_config.json", (CLIP,), _grammar,
             (paths, settings)),
    ]  # fmt: skip
    systems = {s.name: s for s in SYSTEMS}
    for name in RUN_ORDER:
        system = systems[name]
        args = (name, system.recipe, mle, settings.scst, paths)
        done = paths["predictions"] / f"{name}.json"
        steps.append(Step(name, done, system.needs, _captioner, args))
    return steps, paths


def _run_logged(step: Step, log: Path, threads: int) -> float:
    """In a worker process: run the step with its output in `log`; returns its seconds."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(f.fileno(), 1)  # at the descriptor level: Java and tqdm output lands here too
        os.dup2(f.fileno(), 2)
        try:
            step.run(*step.args, threads)
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    return time.perf_counter() - started


def _log_path(logs: Path, step: Step) -> Path:
    return logs / (step.name.lower().replace(" ", "_") + ".log")


def run_steps(steps: list[Step], jobs: int, logs: Path, timings: dict) -> None:
    """Run steps as their needs are met, `jobs` at a time, each in its own process with
    cpu_count / jobs threads (small models scale poorly with threads: on 2 cores, one MLE
    job made 2.0 steps/s with one thread and 2.6 with two, so two one-thread jobs do more)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    finished = {s.name for s in steps if s.done.exists()}
    for name in finished:
        print(f"[reproduce] {name}: done already")
    waiting = [s for s in steps if s.name not in finished]
    running: dict[Future, Step] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        while waiting or running:
            for step in [s for s in waiting if set(s.needs) <= finished][: jobs - len(running)]:
                waiting.remove(step)
                log = _log_path(logs, step)
                print(f"[reproduce] {step.name} ... (log: {log})", flush=True)
                running[pool.submit(_run_logged, step, log, threads)] = step
            if not running:
                raise RuntimeError(f"steps whose needs never finish: {[s.name for s in waiting]}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                step = running.pop(future)
                try:
                    seconds = future.result()
                except BaseException as error:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise RuntimeError(
                        f"step {step.name!r} failed ({error}); see {_log_path(logs, step)}"
                    ) from error
                finished.add(step.name)
                timings[step.name] = round(seconds, 1)
                print(f"[reproduce] {step.name}: finished in {seconds:.0f} s", flush=True)


def reproduce(out: Path, settings: ReproduceSettings, jobs: int = 2) -> Path:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    steps, paths = plan(out, settings)
    timings: dict[str, float] = {}
    run_steps(steps, jobs, out / "logs", timings)
    systems = ["MLE", *SCST_SYSTEMS]
    predictions = paths["predictions"]
    print("[reproduce] evaluate ...", flush=True)
    evaluate_started = time.perf_counter()
    evaluation = evaluate(
        EvaluationConfig(
            predictions={n: predictions / f"{n}.json" for n in systems},
            dataset=paths["dataset"],
            split="test",
            clip=paths["clip"],
            finecapeval=paths["dataset"].parent / "finecapeval.csv",
            reference_row=True,
        ),
        log=lambda message: print(f"  {message}", flush=True),
    )
    write_results(
        evaluation, out / "metrics.json", out / "report.html", report_samples=16, paper_tables=True
    )
    print(format_table(evaluation.result))
    timings["evaluate"] = round(time.perf_counter() - evaluate_started, 1)
    timings["total"] = round(time.perf_counter() - started, 1)
    timings["jobs"] = jobs
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=2))
    print(f"[reproduce] finished in {timings['total']:.0f} s: {out / 'metrics.json'}")
    return out / "metrics.json"
