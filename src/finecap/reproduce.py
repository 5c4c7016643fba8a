"""`finecap reproduce`: Cho et al. (2022) and Chaffin et al. (2022) on the scenes world.

Steps, each a library call a user could make from Python (or the matching command):
 1. generate the scenes world (`write_world`)                 -> DIR/scenes/
 2. train the scenes CLIP (`train_clip`, Hugging Face format)  -> DIR/clip/
 3. train the grammar head (`train_grammar`)                   -> DIR/grammar/
    and pre-train Chaffin et al.'s discriminator on the MLE
    model's captions (`train_discriminator`)                  -> DIR/discriminator/
 4. MLE captioner (transformer decoder, `train`)               -> DIR/captioners/MLE/
 5. SCST from the MLE model, one run per reward (`SYSTEMS`)    -> DIR/captioners/NAME/
    (each captioner then captions the test split               -> DIR/predictions/NAME.json)
 6. the evaluation suite on all systems (+ Reference)          -> DIR/metrics.json, report.html
    and Cho et al.'s Table 4 by the oracle annotator            -> DIR/table4.json, .md
With `features`, the CLIP's image embeddings of the world are extracted once after step 2
(`finecap.features`)                                            -> DIR/features/
and the SCST rows' CLIP rewards and the evaluation read them from there.
Steps run as soon as what they need exists, `jobs` (default 2) at a time in worker processes,
each logging to DIR/logs/STEP.log; the seconds of each land in DIR/timings.json.

Nothing lost, nothing half done: a step is finished when its marker DIR/.steps/STEP.done
(JSON, its seconds) exists, written atomically after the step returned. A rerun skips marked
steps and, before running an unmarked one, removes what an interrupted attempt left of its
outputs, so it is redone cleanly (a captioner keeps its completed `model/` and its training
checkpoints, from which it resumes). One process writes a folder at a time (`FolderLock`).
Workers die with the run: on Linux by the parent-death signal, and a run stopped by Ctrl-C or
SIGTERM kills them before it exits. Folders from before the markers: a step whose last file,
written atomically, exists (clip_eval.json, grammar_eval.json, predictions/NAME.json) is
marked done; their scenes world, not written atomically then, is generated again (the same
seed gives the same bytes; under a minute).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only light imports here (torch, Lightning and the models are imported where used): every
# worker imports this module first, whichever step it runs (10 s saved per worker).
from finecap.clip.config import (
    ClipTrainConfig,
    DiscriminatorTrainConfig,
    GrammarTrainConfig,
    ScenesClipConfig,
)
from finecap.config import Settings, merge
from finecap.errors import UserError
from finecap.io import FolderLock, atomic_write_text
from finecap.scenes.generate import WorldConfig, write_world

if TYPE_CHECKING:
    from finecap.train.config import TrainConfig

CLIP, GRAMMAR, MLE, DISC = "scenes CLIP", "grammar head", "MLE", "discriminator"
FEATURES = "features"  # with `features`: the CLIP's image embeddings, extracted once
MARKERS = ".steps"  # DIR/.steps/STEP.done: the step finished


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
    System("Contrastive+Disc", "scst_scenes_contrastive_disc", (MLE, CLIP, DISC)),
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
    discriminator: DiscriminatorTrainConfig = DiscriminatorTrainConfig()
    mle: dict[str, Any] = {}
    scst: dict[str, Any] = {}
    features: bool = False
    """Extract the run CLIP's image embeddings of every world image once (DIR/features, a
    feature store) for the SCST rows' CLIP rewards and the evaluation to read."""


# The MLE captioner is the default model's recipe (scenes_transformer: a transformer decoder,
# as in Cho et al.), 12 epochs on this run's 5,000-image world. The CLIP is the best recipe of
# the README's probe table: a ResNet image tower (`finecap.clip.conv_clip`) with an
# objectness-gated pool, NegCLIP hard negatives for every description with a pairwise term
# for each, 30 % short texts and dense scene supervision at weight 8, lr 1e-3, batches of 64
# images. The run fits the 45 minutes on 2 cores (40.1 min measured, BENCHMARKS.md) by
# training shorter than each recipe's own schedule (the 653bc29 run, with the longer ones,
# took 63 min): the CLIP 8 epochs (10 in the probe table), the grammar head 2 (6 by default;
# CLIP -> grammar head -> CLIP-S+Grammar is the run's longest chain) and every SCST row
# 1 epoch (2 in scst_scenes_base.yaml).
SCENES_CLIP = ClipTrainConfig(
    epochs=8,
    batch_size=64,
    lr=1e-3,
    short_prob=0.3,
    hard_negative_prob=1.0,
    hard_negative_kinds=["shape", "pattern", "relation", "binding", "size"],
    dense_weight=8.0,
    pair_weight=1.0,
)
SCENES_CLIP_ARCH = ScenesClipConfig(tower="resnet", conv_pool="gated")
FULL = ReproduceSettings(
    clip_arch=SCENES_CLIP_ARCH,
    clip=SCENES_CLIP,
    grammar=GrammarTrainConfig(epochs=2),
    mle={"optim": {"max_epochs": 12}},
    scst={"data": {"val_images": 100}, "optim": {"max_epochs": 1}},
)
QUICK = ReproduceSettings(
    world=WorldConfig(n=300, seed=0),
    clip_arch=ScenesClipConfig(tower="resnet", hidden=64, layers=2, conv_widths=[32, 64, 128]),
    clip=ClipTrainConfig(epochs=3),
    grammar=GrammarTrainConfig(epochs=1),
    discriminator=DiscriminatorTrainConfig(epochs=2),
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
    from finecap.rewards.clip_rewards import ClipRewardConfig, ClipSConfig
    from finecap.rewards.discriminator import DiscriminatorConfig
    from finecap.rewards.grammar import GrammarRewardConfig
    from finecap.train.config import load_config

    run = {"output_dir": str(out / "run"), "data": {"dataset": str(paths["dataset"])}}
    run["trainer"] = {"threads": threads}
    config = load_config(recipe, **merge(changes, run))
    for term in config.scst.rewards if config.scst else ():
        # A CLIP-S term with clip_from "grammar" scores with the grammar term's fine-tuned
        # CLIP (Cho et al.), set below with the grammar model; every other CLIP term, ours.
        grammar_clip = isinstance(term, ClipSConfig) and term.clip_from == "grammar"
        if isinstance(term, ClipRewardConfig) and not grammar_clip:
            term.clip = str(paths["clip"])
        if isinstance(term, ClipRewardConfig) and FEATURES in paths:
            term.features = str(paths[FEATURES])  # the grammar CLIP's vision tower is ours
        if isinstance(term, DiscriminatorConfig):
            term.pretrained = str(paths["discriminator"])
        if isinstance(term, GrammarRewardConfig):
            term.model = str(paths["grammar"])
    return config


def _train_captioner(config: TrainConfig, out: Path, init: Path | None) -> Path:
    from finecap.train.run import train

    exported = train(config, init=init)
    partial = out / "model.partial"  # renamed when complete: an interrupted copy is redone
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(exported, partial)
    partial.rename(out / "model")
    return out / "model"


def caption_split(model_dir: Path, dataset: Path, split: str, out: Path) -> None:
    from finecap.captioner import Captioner
    from finecap.data.formats import load_corpus, save_predictions
    from finecap.data.images import load_image

    captioner = Captioner.from_pretrained(model_dir)
    corpus = load_corpus(dataset)
    records = corpus.split(split)
    images = [load_image(corpus.image_path(r)) for r in records]
    captions = captioner.caption(images, beam_size=3, batch_size=50)
    save_predictions(out, {r.image_id: c.text for r, c in zip(records, captions, strict=True)})


@dataclass
class Step:
    """One unit of the pipeline: `run(*args, threads)` writes `outputs` (files or folders),
    which are removed before it runs unless it is marked done. `legacy`: a file whose
    existence proves that a run from before the markers finished the step."""

    name: str
    outputs: tuple[Path, ...]
    needs: tuple[str, ...]
    run: Callable[..., None]
    args: tuple = ()
    legacy: Path | None = None


def _scenes(paths: dict, settings: ReproduceSettings, threads: int) -> None:
    write_world(settings.world, paths["dataset"].parent, progress=False)


def _clip(paths: dict, settings: ReproduceSettings, threads: int) -> None:
    from finecap.clip.train import train_clip

    train_clip(paths["dataset"], paths["clip"], settings.clip_arch, settings.clip)


def _grammar(paths: dict, settings: ReproduceSettings, threads: int) -> None:
    from finecap.clip.grammar import train_grammar

    train_grammar(paths["clip"], paths["dataset"], paths["grammar"], settings.grammar)


def _features(paths: dict, settings: ReproduceSettings, threads: int) -> None:
    from finecap.features.extract import ExtractConfig, extract

    config = ExtractConfig(dataset=paths["dataset"], clip=[str(paths["clip"])], out=paths[FEATURES])
    extract(config)


def _discriminator(paths: dict, settings: ReproduceSettings, threads: int) -> None:
    from finecap.rewards.discriminator import train_discriminator

    mle = paths["captioners"] / MLE / "model"
    train_discriminator(
        paths["dataset"], paths["clip"], paths["discriminator"], settings.discriminator, mle
    )


def _captioner(
    name: str, recipe: str, init: Path | None, changes: dict, paths: dict, threads: int
) -> None:
    """Train one captioner (unless its model exists), then caption the test split with it."""
    import torch

    folder = paths["captioners"] / name
    if not (folder / "model").exists():
        config = captioner_config(recipe, folder, changes, paths, threads)
        _train_captioner(config, folder, init)
    torch.set_num_threads(threads)
    caption_split(folder / "model", paths["dataset"], "test", paths["predictions"] / f"{name}.json")


def _captioner_step(
    name: str, needs: tuple[str, ...], recipe: str, init: Path | None, changes: dict, paths: dict
) -> Step:
    # Only the predictions and a half-copied model are outputs to remove: a complete model/
    # (renamed into place) is kept, and training resumes from its last (atomic) checkpoint.
    predictions = paths["predictions"] / f"{name}.json"
    outputs = (predictions, paths["captioners"] / name / "model.partial")
    args = (name, recipe, init, changes, paths)
    return Step(name, outputs, needs, _captioner, args, legacy=predictions)


def plan(out: Path, settings: ReproduceSettings) -> tuple[list[Step], dict]:
    """Every step with what it needs; the MLE model and the CLIP train side by side."""
    paths = {
        "dataset": out / "scenes" / "dataset.json",
        "clip": out / "clip",
        "grammar": out / "grammar",
        "captioners": out / "captioners",
        "predictions": out / "predictions",
        "discriminator": out / "discriminator",
    }
    mle = paths["captioners"] / MLE / "model"
    # The legacy proofs are the files these steps write last, atomically, after the weights.
    steps = [
        Step("scenes world", (out / "scenes",), (), _scenes, (paths, settings)),
        Step(CLIP, (paths["clip"],), ("scenes world",), _clip, (paths, settings),
             legacy=paths["clip"] / "clip_eval.json"),
        _captioner_step(MLE, ("scenes world",), MLE_RECIPE, None, settings.mle, paths),
        Step(GRAMMAR, (paths["grammar"],), (CLIP,), _grammar, (paths, settings),
             legacy=paths["grammar"] / "grammar_eval.json"),
        Step(DISC, (paths["discriminator"],), (CLIP, MLE), _discriminator, (paths, settings),
             legacy=paths["discriminator"] / "discriminator_eval.json"),
    ]  # fmt: skip
    if settings.features:
        paths[FEATURES] = out / "features"
        steps.append(Step(FEATURES, (paths[FEATURES],), (CLIP,), _features, (paths, settings)))
    systems = {s.name: s for s in SYSTEMS}
    for name in RUN_ORDER:
        system = systems[name]
        needs = system.needs + ((FEATURES,) if settings.features and CLIP in system.needs else ())
        steps.append(_captioner_step(name, needs, system.recipe, mle, settings.scst, paths))
    return steps, paths


def _run_logged(step: Step, log: Path, threads: int) -> float:
    """In a worker process: run the step with its output in `log`; returns its seconds."""
    import torch

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


def _slug(step: Step) -> str:
    return step.name.lower().replace(" ", "_")


def _log_path(out: Path, step: Step) -> Path:
    return out / "logs" / f"{_slug(step)}.log"


def _marker(out: Path, step: Step) -> Path:
    return out / MARKERS / f"{_slug(step)}.done"


def _is_done(out: Path, step: Step) -> bool:
    if _marker(out, step).exists():
        return True
    if step.legacy is not None and step.legacy.exists():  # finished before markers existed
        atomic_write_text(_marker(out, step), json.dumps({"seconds": None}) + "\n")
        return True
    return False


def _clear(step: Step) -> None:
    """Remove what an interrupted attempt left of the step's outputs, so it starts clean."""
    for path in step.outputs:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt, so that both stop
    a run the same way (workers killed, finished steps kept)."""

    exit_code = 128 + signal.SIGTERM


class StepFailed(UserError, RuntimeError):
    """A step raised; its log has the details, the finished steps are kept."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; SIGTERM then ends the process as usual
        return

    def stop(signum: int, frame: object) -> None:
        raise Stopped("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _die_with_parent(parent: int) -> None:
    """Pool initializer: the worker dies with the run however the run dies (kill -9
    included), or it would go on writing into a folder a rerun is clearing. Linux's
    parent-death signal fires when the thread that started the worker ends; `submit` starts
    workers (spawn context) in the thread calling run_steps, which outlives the pool. Ctrl-C
    is left to the parent, which kills the workers itself (elsewhere than Linux, the only
    cleanup)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was set: none will come
        os._exit(1)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL every worker (the executor can only wait for running work before Python 3.14).
    Nothing gentler: their steps are unmarked, so redone anyway, and Lightning turns SIGTERM
    into an exception that the worker would report and then wait for more work."""
    processes = list((pool._processes or {}).values())
    for process in processes:
        process.kill()
    for process in processes:
        process.join(10)


def _start(pool: ProcessPoolExecutor, step: Step, out: Path, threads: int) -> Future:
    _clear(step)
    log = _log_path(out, step)
    print(f"[reproduce] {step.name} ... (log: {log})", flush=True)
    return pool.submit(_run_logged, step, log, threads)


def run_steps(steps: list[Step], jobs: int, out: Path, timings: dict) -> None:
    """Run the steps not marked done in `out` as their needs are met, `jobs` at a time, each in
    its own process with cpu_count / jobs threads (small models scale poorly with threads: on
    2 cores, one MLE job made 2.0 steps/s with one thread and 2.6 with two, so two one-thread
    jobs do more). Logs go to out/logs, markers to out/.steps. After a failure the running
    steps finish (and are kept), then RuntimeError names the step and its log. Ctrl-C or
    SIGTERM (`Stopped`) kill the workers and propagate."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    finished = {s.name for s in steps if _is_done(out, s)}
    for name in finished:
        print(f"[reproduce] {name}: done already")
    waiting = [s for s in steps if s.name not in finished]
    running: dict[Future, Step] = {}
    failed: tuple[Step, BaseException] | None = None
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    )
    with _sigterm_raises(), pool:
        try:
            while running or (waiting and not failed):
                ready = [s for s in waiting if set(s.needs) <= finished] if not failed else []
                for step in ready[: jobs - len(running)]:
                    waiting.remove(step)
                    running[_start(pool, step, out, threads)] = step
                if not running:
                    raise RuntimeError(
                        f"steps whose needs never finish: {[s.name for s in waiting]}"
                    )
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    step = running.pop(future)
                    # exception(), not result() in a try: the parent's own Ctrl-C must not
                    # pass for a failed step.
                    if (error := future.exception()) is not None:
                        failed = failed or (step, error)
                        continue
                    seconds = round(future.result(), 1)
                    atomic_write_text(_marker(out, step), json.dumps({"seconds": seconds}) + "\n")
                    finished.add(step.name)
                    timings[step.name] = seconds
                    print(f"[reproduce] {step.name}: finished in {seconds:.0f} s", flush=True)
        except KeyboardInterrupt:
            _kill_workers(pool)
            raise
    if failed:
        step, error = failed
        log = _log_path(out, step)
        raise StepFailed(f"step {step.name!r} failed ({error}); see {log}") from error


def reproduce(out: Path, settings: ReproduceSettings, jobs: int = 2) -> Path:
    """Run every step not done yet, then the evaluation; returns DIR/metrics.json. One run per
    folder at a time (`FolderInUseError` otherwise); Ctrl-C or SIGTERM (`Stopped`) stop it
    with its workers, keeping the finished steps for the next run."""
    with FolderLock(out), _sigterm_raises():
        return _steps_then_evaluation(out, settings, jobs)


# Cho et al.'s Table 4: their model against each baseline, win / lose / tie per criterion.
TABLE4 = [("CLIP-S+Grammar", "MLE"), ("CLIP-S+Grammar", "CIDEr")]


def write_table4(paths: dict, out: Path) -> str:
    """Table 4 by the oracle annotator (`finecap.scenes.oracle`) on every test image, to
    DIR/table4.json and DIR/table4.md; returns the Markdown."""
    from finecap.data.formats import load_corpus, load_predictions
    from finecap.scenes.oracle import oracle_tally
    from finecap.scenes.world import Scene

    records = load_corpus(paths["dataset"]).split("test")
    scenes = [Scene.from_dict(r.extra["scene"]) for r in records]
    rows, doc = [], {}
    for a, b in TABLE4:
        caps = {n: load_predictions(paths["predictions"] / f"{n}.json") for n in (a, b)}
        t = oracle_tally(*[(n, [caps[n][r.image_id] for r in records]) for n in (a, b)], scenes)
        pct = t.percentages()
        doc[f"{a} vs {b}"] = {c: {"win": p["A"], "lose": p["B"], "tie": p["tie"]}
                              for c, p in pct.items()}  # fmt: skip
        cells = [f"{p['A']:.1f} / {p['B']:.1f} / {p['tie']:.1f}" for p in pct.values()]
        rows.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    header = "| comparison | " + " | ".join(next(iter(doc.values()))) + " |"
    table = "\n".join([header, "|---" * (1 + len(next(iter(doc.values())))) + "|", *rows])
    atomic_write_text(out / "table4.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "table4.md", f"win / lose / tie %, {len(records)} test images\n\n"
                      + table + "\n")  # fmt: skip
    return table


def _steps_then_evaluation(out: Path, settings: ReproduceSettings, jobs: int) -> Path:
    from finecap.evaluation import EvaluationConfig, evaluate, write_results
    from finecap.report import format_table

    started = time.perf_counter()
    steps, paths = plan(out, settings)
    timings: dict[str, float] = {}
    run_steps(steps, jobs, out, timings)
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
            features=paths.get(FEATURES),
            finecapeval=paths["dataset"].parent / "finecapeval.csv",
            reference_row=True,
            metrics=["all"],  # BERTScore and caption similarity too (on request elsewhere)
        ),
        log=lambda message: print(f"  {message}", flush=True),
    )
    from finecap.report_plots import run_metric_logs

    curves = {n: run_metric_logs(paths["captioners"] / n / "run") for n in systems}
    write_results(
        evaluation,
        out / "metrics.json",
        out / "report.html",
        report_samples=16,
        paper_tables=True,
        curves=curves,
    )
    print(format_table(evaluation.result))
    print(write_table4(paths, out))
    timings["evaluate"] = round(time.perf_counter() - evaluate_started, 1)
    timings["total"] = round(time.perf_counter() - started, 1)
    timings["jobs"] = jobs
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=2))
    print(f"[reproduce] finished in {timings['total']:.0f} s: {out / 'metrics.json'}")
    return out / "metrics.json"
