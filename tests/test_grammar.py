"""Grammar head: each negative operation does exactly what it says, the head's shape, the frozen
vision tower, and train -> save -> load -> score end to end on a tiny world."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers.tiny_models import make_tiny_clip

from finecap.cli import main as cli_main
from finecap.cli import parse
from finecap.clip import load_clip
from finecap.clip.grammar import (
    NEGATIVES,
    GrammarConfig,
    GrammarHead,
    GrammarModel,
    GrammarTask,
    GrammarTrainConfig,
    first_occurrences,
    freeze_vision,
    insert_words,
    make_negative,
    remove_ngram,
    repeat_ngram,
    shuffle_words,
    swap_words,
    train_grammar,
)
from finecap.clip.train import ClipTrainConfig, ScenesClipConfig, train_clip
from finecap.scenes import generate_world

WORDS = ["a", "small", "red", "circle", "is", "left", "of", "a", "large", "blue", "square"]
VOCAB = ["red", "blue", "circle", "square", "on", "grass", "the", "a"]
SEEDS = range(300)


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(w in it for w in short)


def _copies_of_an_ngram(out: list[str]) -> bool:
    """Whether `out` is WORDS with 1-3 extra copies of one of its n-grams (n in 1..3)."""
    extra = Counter(out) - Counter(WORDS)
    grams = [WORDS[i : i + n] for n in (1, 2, 3) for i in range(len(WORDS) - n + 1)]
    return _is_subsequence(WORDS, out) and any(
        extra == Counter(gram * r) and len(out) == len(WORDS) + n * r
        for gram in grams
        for n in [len(gram)]
        for r in (1, 2, 3)
    )


def test_repeat_inserts_copies_at_independent_positions() -> None:
    adjacent = 0
    for seed in SEEDS:
        out = repeat_ngram(WORDS, VOCAB, random.Random(seed))
        assert _copies_of_an_ngram(out), out
        # finecap's earlier rule: every copy right after the original n-gram
        adjacent += any(
            out == WORDS[: i + n] + WORDS[i : i + n] * r + WORDS[i + n :]
            for n in (1, 2, 3)
            for r in (1, 2, 3)
            for i in range(len(WORDS) - n + 1)
        )
    assert adjacent < len(SEEDS) // 2  # most draws put some copy away from the original


def test_repeat_copies_are_not_only_next_to_the_original() -> None:
    words = ["w0", "w1", "w2", "w3", "w4", "w5"]  # distinct: each occurrence is a copy or it
    gaps = set()
    for seed in range(500):
        out = repeat_ngram(words, VOCAB, random.Random(seed))
        if len(out) == 7:  # one copy of one word: it occurs twice
            (word,) = Counter(out) - Counter(words)
            at = [i for i, w in enumerate(out) if w == word]
            gaps.add(at[1] - at[0])
            assert [w for i, w in enumerate(out) if i != at[0]] == words or (
                [w for i, w in enumerate(out) if i != at[1]] == words
            )
    assert 1 in gaps and max(gaps) >= 4  # next to it, and far from it


def test_insert_never_appends_after_the_last_word() -> None:
    for seed in SEEDS:
        out = insert_words(["x", "y"], VOCAB, random.Random(seed))
        assert out[-1] == "y"


def test_remove_drops_n_consecutive_words() -> None:
    for seed in SEEDS:
        out = remove_ngram(WORDS, VOCAB, random.Random(seed))
        n = len(WORDS) - len(out)
        assert 1 <= n <= 3
        assert any(out == WORDS[:i] + WORDS[i + n :] for i in range(len(WORDS) - n + 1))
    assert remove_ngram(["one"], VOCAB, random.Random(0)) is None
    assert remove_ngram(["a", "b"], VOCAB, random.Random(0)) in (["a"], ["b"])


def test_insert_adds_one_to_three_vocabulary_words() -> None:
    for seed in SEEDS:
        out = insert_words(WORDS, VOCAB, random.Random(seed))
        assert 1 <= len(out) - len(WORDS) <= 3
        assert _is_subsequence(WORDS, out)
        extra = Counter(out) - Counter(WORDS)
        assert set(extra) <= set(VOCAB) and sum(extra.values()) == len(out) - len(WORDS)


def test_swap_replaces_one_to_three_words_by_other_vocabulary_words() -> None:
    for seed in SEEDS:
        out = swap_words(WORDS, VOCAB, random.Random(seed))
        changed = [i for i, (a, b) in enumerate(zip(WORDS, out, strict=True)) if a != b]
        assert 1 <= len(changed) <= 3
        assert all(out[i] in VOCAB for i in changed)


def test_shuffle_permutes_and_always_differs() -> None:
    for seed in SEEDS:
        out = shuffle_words(["a", "b"], VOCAB, random.Random(seed))
        assert out == ["b", "a"]
        out = shuffle_words(WORDS, VOCAB, random.Random(seed))
        assert sorted(out) == sorted(WORDS) and out != WORDS
    assert shuffle_words(["a", "a", "a"], VOCAB, random.Random(0)) is None


def test_make_negative_is_uniform_and_always_differs() -> None:
    rng = random.Random(0)
    kinds = Counter()
    for _ in range(2500):
        neg, kind = make_negative("A small red circle, left of a large blue square.", VOCAB, rng)
        assert neg != " ".join(WORDS)
        kinds[kind] += 1
    assert set(kinds) == set(NEGATIVES)
    assert all(400 < c < 600 for c in kinds.values()), kinds  # 500 expected each
    # A one-word caption cannot be shuffled or shortened: another kind is drawn instead.
    for _ in range(50):
        neg, kind = make_negative("dog", VOCAB, rng)
        assert kind in {"repeat", "insert", "swap"} and neg != "dog"
    with pytest.raises(ValueError):
        make_negative("dog", VOCAB, rng, kinds=["shuffle"])


def test_make_negative_never_returns_a_known_fluent_caption() -> None:
    rng = random.Random(1)
    fluent = {"one triangle", "black triangle", "one black"}  # every 1-word removal
    for _ in range(200):
        neg, _ = make_negative("one black triangle", VOCAB, rng, ["remove"], fluent)
        assert neg not in fluent
        assert neg in {"one", "black", "triangle"}  # what is left: 2-word removals


def test_first_occurrences() -> None:
    assert first_occurrences(torch.tensor([3, 1, 3, 2, 1])).tolist() == [0, 1, 3]


def test_head_is_two_layer_mlp_without_biases() -> None:
    head = GrammarHead(24)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {"net.0.weight": (24, 24), "net.2.weight": (2, 24)}
    assert head(torch.randn(5, 24)).shape == (5, 2)


def test_training_step_leaves_vision_tower_frozen(tmp_path: Path) -> None:
    bundle = load_clip(make_tiny_clip(tmp_path))
    clip = bundle.model
    freeze_vision(clip)
    frozen = [*clip.vision_model.parameters(), *clip.visual_projection.parameters()]
    assert all(not p.requires_grad for p in frozen)
    dim = clip.config.text_config.hidden_size
    model = GrammarModel(bundle, GrammarHead(dim), GrammarConfig(hidden_size=dim))
    task = GrammarTask(
        model, torch.nn.functional.normalize(torch.randn(4, 16), dim=-1), GrammarTrainConfig()
    )
    task.log_dict = lambda *a, **k: None  # no trainer attached
    model.train()
    batch = (
        torch.arange(4),
        ["a red dog", "a cat", "the man", "a big table"],
        ["dog dog", "a", "man the", "a a"],
    )
    task.training_step(batch, 0).backward()
    assert all(p.grad is None for p in frozen)
    assert clip.logit_scale.grad is not None  # Cho et al. train the temperature
    text_grads = [p.grad for p in clip.text_model.parameters()]
    assert all(g is not None for g in text_grads) and any(g.abs().sum() > 0 for g in text_grads)
    assert all(p.grad is not None for p in model.head.parameters())
    assert clip.text_projection.weight.grad is not None


def test_optimiser_is_the_references_and_variants_restore_finecaps(tmp_path: Path) -> None:
    bundle = load_clip(make_tiny_clip(tmp_path))
    freeze_vision(bundle.model)
    dim = bundle.model.config.text_config.hidden_size
    model = GrammarModel(bundle, GrammarHead(dim), GrammarConfig(hidden_size=dim))
    feats = torch.randn(4, 16)
    opt = GrammarTask(model, feats, GrammarTrainConfig()).configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)  # no scheduler: a constant learning rate
    decayed, biases = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and biases["weight_decay"] == 0.0
    assert opt.defaults["eps"] == 1e-6
    assert any(p is bundle.model.logit_scale for p in decayed["params"])
    assert bundle.model.logit_scale.requires_grad
    named = dict(model.named_parameters())
    bias_ids = {id(p) for n, p in named.items() if n.endswith("bias") and p.requires_grad}
    assert {id(p) for p in biases["params"]} == bias_ids and bias_ids

    cfg = GrammarTrainConfig(schedule="warmup_cosine", train_logit_scale=False)
    task = GrammarTask(model, feats, cfg)
    assert not bundle.model.logit_scale.requires_grad
    task._trainer = type("T", (), {"estimated_stepping_batches": 100})()  # just the step count
    out = task.configure_optimizers()
    assert set(out) == {"optimizer", "lr_scheduler"}
    trained = [p for group in out["optimizer"].param_groups for p in group["params"]]
    assert all(p is not bundle.model.logit_scale for p in trained)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), n=40, seed=3, image_size=48)


@pytest.fixture(scope="module")
def scenes_clip(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "clip"
    arch = ScenesClipConfig(tower="vit", image_size=48, hidden=32, layers=1)
    train_clip(world, out, arch, ClipTrainConfig(epochs=1, batch_size=16))
    return out


def test_train_save_load_score(world: Path, scenes_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "grammar"
    cfg = GrammarTrainConfig(epochs=2, batch_size=16)
    result = train_grammar(scenes_clip, world, out, cfg)
    acc = result["accuracy"]
    assert set(NEGATIVES) | {"fluent_reference", "overall"} <= set(acc)
    assert json.loads((out / "grammar_eval.json").read_text())["accuracy"] == acc
    # The folder is an ordinary Hugging Face CLIP, plus the head.
    bundle = load_clip(out)
    before = load_clip(scenes_clip).model.state_dict()
    after = bundle.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision_model"))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("text_model"))
    assert set(load_file(out / "grammar_head.safetensors")) == {"net.0.weight", "net.2.weight"}
    model = GrammarModel.from_pretrained(out)
    g = model.score(["a red circle on grass.", "circle circle red red", ""])
    assert g.shape == (3,) and ((g >= 0) & (g <= 1)).all()
    # Normalisation: case and punctuation do not change the score.
    torch.testing.assert_close(model.score(["A red circle."]), model.score(["a red circle"]))


def test_cli_score(world: Path, scenes_clip: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "g"
    assert cli_main(["grammar", "train", "--clip", str(scenes_clip), "--dataset", str(world),
                     "--out", str(out), "--epochs", "1", "--batch-size", "16"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli_main(["grammar", "score", "--model", str(out), "a red circle", "red red"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["a red circle", "red red"]
    assert all(0 <= float(line.split("\t")[0]) <= 1 for line in lines)


def test_cli_help_and_bad_values(tmp_path: Path, capsys) -> None:
    for command in ("train", "score"):
        assert cli_main(["grammar", command, "--help"]) == 0
    assert "--description-prob" in capsys.readouterr().out
    train = ["grammar", "train", "--clip", "c", "--dataset", "d.json", "--out", str(tmp_path)]
    assert cli_main([*train, "--epochs", "0"]) == 2
    assert re.search(r"epochs", capsys.readouterr().err)
    assert cli_main([*train, "--description-prob", "1.5"]) == 2
    assert re.search(r"description[_-]prob", capsys.readouterr().err)
    assert cli_main(["grammar", "score", "--model", str(tmp_path)]) == 2  # no TEXT
    assert re.search(r"texts", capsys.readouterr().err)
    assert cli_main(["grammar", "score", "--model", str(tmp_path), "a red circle"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a grammar model folder" in err


def test_cli_flags_reach_the_config() -> None:
    _, options, _ = parse(["grammar", "train", "--clip", "c", "--dataset", "d.json", "--out", "o",
                           "--epochs", "2", "--batch-size", "8", "--lr", "1e-4",
                           "--description-prob", "0", "--seed", "3", "--eval-split", "val",
                           "--threads", "1"])  # fmt: skip
    assert (options.clip, options.dataset, options.out) == ("c", "d.json", "o")
    expected = GrammarTrainConfig(
        epochs=2, batch_size=8, lr=1e-4, description_prob=0, seed=3, eval_split="val",
        trainer={"threads": 1, "accelerator": "auto"},
    )  # fmt: skip
    assert options.train == expected
    _, options, _ = parse(["grammar", "score", "--model", "m", "a red circle", "red red"])
    assert (options.model, options.texts) == ("m", ["a red circle", "red red"])


def _grammar_folder(tmp_path: Path) -> tuple[Path, Path]:
    """(original CLIP folder, grammar folder whose text tower differs from it)."""
    original = make_tiny_clip(tmp_path)
    bundle = load_clip(original)
    with torch.no_grad():  # stands in for fine-tuning: the text tower moves, vision does not
        bundle.model.text_projection.weight.mul_(-1)
    dim = bundle.model.config.text_config.hidden_size
    folder = tmp_path / "grammar"
    GrammarModel(bundle, GrammarHead(dim), GrammarConfig(hidden_size=dim)).save_pretrained(folder)
    return original, folder


def test_clip_s_from_grammar_scores_with_the_grammar_folders_clip(tmp_path: Path) -> None:
    from PIL import Image

    from finecap.rewards import RewardBatch, create_reward, rewards_from_config

    original, folder = _grammar_folder(tmp_path)
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    batch = RewardBatch(["a red dog", "a blue cat"], images=images)
    by_folder = create_reward("clip_s", clip=str(folder))(batch)
    by_original = create_reward("clip_s", clip=str(original))(batch)
    assert not torch.allclose(by_folder, by_original)
    for model in (str(folder), GrammarModel.from_pretrained(folder)):
        terms = [{"name": "clip_s", "clip_from": "grammar"}, {"name": "grammar", "model": model}]
        (_, clip_s), _ = rewards_from_config(terms).terms
        torch.testing.assert_close(clip_s(batch), by_folder)


def test_clip_from_grammar_is_checked_when_the_recipe_loads() -> None:
    from finecap.errors import UserError
    from finecap.train.config import load_config

    recipe = "scst_scenes_clip_s_grammar"
    (clip_s, grammar) = load_config(recipe).scst.rewards
    assert (clip_s.clip_from, clip_s.clip, clip_s.weight) == ("grammar", None, 2.0)
    assert grammar.weight == 1.0
    with pytest.raises(UserError, match="leave `clip` unset"):
        load_config(recipe, ["scst.rewards.0.clip=runs/clip"])
    with pytest.raises(UserError, match="there is no grammar term"):
        load_config(recipe, ["scst.rewards=[{name: clip_s, clip_from: grammar}]"])
    assert load_config(recipe, ["scst.rewards.0.clip_from=clip", "scst.rewards.0.clip=c"])
