"""The typed config layer: recipes, `--set` overrides, saved models and the train command's
failures, each checked when it loads, with one message naming the key."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from finecap.captioner import Captioner
from finecap.cli import main
from finecap.config import ConfigError, list_recipes, set_dotted
from finecap.data.images import load_image
from finecap.scenes import generate_world
from finecap.train.config import load_config

ROOT = Path(__file__).parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
RECIPE = "scenes_transformer"  # a shipped recipe, by name
README_CAPTIONS = {  # `finecap caption examples/` [--model mle], as the README shows
    "default": [
        "a large red hexagon and a large purple striped heart on sand",
        "a large red hexagon on sand",
        "a small red circle on grass",
        "a large red hexagon and a large black triangle on grass",
        "a small pink striped square against the sky",
        "a small black striped diamond in front of a brick wall",
        "a small purple star on a wooden floor",
        "a large green circle on a wooden floor",
    ],
    "mle": [
        "there is a red hexagon",
        "there is a red hexagon",
        "there is a red hexagon",
        "there is a red hexagon",
        "a pink box",
        "there is a black diamond",
        "a purple star",
        "there is a green ball",
    ],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), 30, seed=2, image_size=48)


def _error(overrides: list[str], recipe: str = RECIPE) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(recipe, overrides)
    return str(info.value)


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads_by_name_and_type_checks(name: str) -> None:
    config = load_config(name)
    assert config.optim.lr > 0 and isinstance(config.optim.lr, float)
    assert config.task in ("mle", "scst")
    if config.task == "scst":
        assert config.scst.rewards and all(t.weight > 0 for t in config.scst.rewards)
    else:
        assert config.data.max_len <= config.model.decoder.max_len


def test_set_coerces_yaml_1_2_numbers_and_addresses_list_items() -> None:
    config = load_config(RECIPE, ["optim.lr=1e-4"])
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)
    scst = load_config("scst_scenes_cider_clip_s", ["scst.rewards.0.weight=2.5"])
    assert [t.weight for t in scst.scst.rewards] == [2.5, 1.0]
    data = {"a": {"b": [{"c": 1}]}}
    set_dotted(data, "a.b.0.c=x")
    assert data == {"a": {"b": [{"c": "x"}]}}
    with pytest.raises(ConfigError, match="not an item of a list of 2"):
        load_config("scst_scenes_cider_clip_s", ["scst.rewards.5.weight=2"])


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("data.batch_size=abc", "data.batch_size", "valid integer"),
        ("optim.max_epochs=three", "optim.max_epochs", "valid integer"),
        ("data.batch_size=0", "data.batch_size", "greater than or equal to 1"),
        ("data.captions_per_image=0", "data.captions_per_image", "greater than or equal to 1"),
        ("data.max_len=0", "data.max_len", "greater than or equal to 1"),
        ("optim.min_lr_ratio=.nan", "optim.min_lr_ratio", "finite number"),
        ("optim.lr=.inf", "optim.lr", "finite number"),
        ("task=foo", "task", "unknown training task 'foo'; registered: mle, scst"),
        ("trainer.logger=wandb", "trainer.logger", "'csv' or 'tensorboard'"),
        ("bogus=1", "bogus", "unknown key"),
        ("optim.learning_rate=1", "optim.learning_rate", "unknown key"),
        ("model.decoder.embed_size=64", "model.decoder.embed_size", "unknown key"),
        ("model.decoder.hidden_size=102", "model.decoder", "num_heads (4) must divide"),
        ("decoding.max_len=30", "decoding.max_len = 30", "decoder.max_len = 16"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(override: str, key: str, expected: str) -> None:
    message = _error([override])
    assert f"{key}" in message and expected in message, message
    assert "scenes_transformer.yaml" in message


def test_decoder_fields_belong_to_their_decoder() -> None:
    message = _error(["model.decoder.num_layers=6"], "scenes_lstm")  # a transformer field
    assert "model.decoder.num_layers: unknown key; the keys of lstm:" in message
    assert "attention_size" in message


def test_scst_section_and_reward_terms_are_typed() -> None:
    recipe = "scst_scenes_clip_s"
    assert "scst.sampels: unknown key" in _error(["scst.sampels=3"], recipe)
    message = _error(["scst.rewards.0.clip_path=x"], recipe)
    assert "scst.rewards.0.clip_path: unknown key; the keys of clip_s:" in message
    assert "scst.rewards.0.w" in _error(["scst.rewards.0.w=nope"], recipe)
    message = _error(["scst.rewards=[{name: clip_s}]"], recipe)
    assert "scst.rewards.0: the clip_s reward needs `clip`" in message
    assert "unknown reward 'bleu'" in _error(["scst.rewards=[{name: bleu}]"], recipe)
    cider = load_config("scst_scenes_cider").scst.rewards[0]
    assert cider.dataset == load_config("scst_scenes_cider").data.dataset  # its default


def test_base_errors_name_the_base_file_and_where_it_was_looked_for(tmp_path: Path) -> None:
    copied = tmp_path / "mine.yaml"
    copied.write_text("base: no_such_base.yaml\nscst: {samples: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(copied)
    message = str(info.value)
    assert "base: no_such_base.yaml: no such file" in message
    assert str(tmp_path / "no_such_base.yaml") in message and "configs" in message
    # A copy of a shipped variant finds its shipped base.
    shutil.copy(ROOT / "src/finecap/configs/scst_scenes_cider.yaml", tmp_path / "copy.yaml")
    assert load_config(tmp_path / "copy.yaml").scst.samples == 5


def test_print_config_prints_the_resolved_typed_recipe(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--config", RECIPE, "--set", "optim.lr=1e-4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 1e-4
    assert printed["model"]["decoder"] == load_config(RECIPE).model.decoder.to_dict()
    assert main(["train", "--config", RECIPE, "--set", "optim.lr=x", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "'x'" in err and "Traceback" not in err


def test_recipes_lists_the_shipped_recipes(capsys: pytest.CaptureFixture) -> None:
    assert main(["recipes"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == list_recipes() and RECIPE in names


def _train(tmp_path: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "run"
    status = main(["train", "--config", RECIPE, "--output-dir", str(out), *args])
    return status, out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "data.dataset=no/such/dataset.json"], "no/such/dataset.json"),
        (["--set", "optim.max_epochs=three"], "optim.max_epochs"),
        (["--set", "model.encoder={name: resnet50, pretrained: finecap-tests/absent}"], "offline"),
        (["--init", "no/such/model"], "no/such/model"),
    ],
)
def test_train_failures_are_one_message_and_leave_no_run_folder(
    tmp_path: Path, world: Path, capsys: pytest.CaptureFixture, args: list[str], expected: str
) -> None:
    started = time.perf_counter()
    status, out = _train(tmp_path, "--set", f"data.dataset={world}", *args)
    err = capsys.readouterr().err
    assert status == 2, err
    assert expected in err and "Traceback" not in err and err.startswith("finecap train: ")
    assert not out.exists()
    assert time.perf_counter() - started < 30  # offline weights: no minutes of HTTP retries


def test_scst_needs_init_and_a_reward_clip_that_exists(
    tmp_path: Path, world: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "scst"
    base = ["train", "--config", "scst_scenes_clip_s", "--output-dir", str(out)]
    base += ["--set", f"data.dataset={world}"]
    assert main(base) == 2
    assert "pass --init MODEL_DIR" in capsys.readouterr().err
    model = FIXTURES / "format1_captioners" / "lstm"  # max_len 8
    short = [f"--set={key}.max_len=8" for key in ("data", "decoding", "scst")]
    assert main([*base, "--init", str(model), *short]) == 2
    err = capsys.readouterr().err
    assert "runs/reproduce/clip" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*base, "--init", str(model)]) == 2  # captions longer than the model's 8 words
    err = capsys.readouterr().err
    assert "data.max_len = 16" in err and "scst.max_len = 16" in err and "max_len = 8" in err


@pytest.mark.parametrize("name", ["default", "mle"])
def test_bundled_models_caption_the_examples_as_the_readme_shows(name: str) -> None:
    captioner = Captioner.from_pretrained(name)
    images = [load_image(ROOT / "examples" / f"scene_{i}.png") for i in range(8)]
    assert [c.text for c in captioner.caption(images, beam_size=3)] == README_CAPTIONS[name]
    folder = "default_model" if name == "default" else "mle_model"
    saved = json.loads((ROOT / "src/finecap/assets" / folder / "config.json").read_text())
    assert saved["format"] == 2 and "checkpoint" not in saved["finecap"]
    assert saved["finecap"]["task"] == ("scst" if name == "default" else "mle")


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_models_saved_before_the_typed_layer_load_and_caption_as_before(
    decoder: str, tmp_path: Path
) -> None:
    """Tiny captioners written by finecap at bc19717 (flat decoder config, format 1), with the
    captions and scores that version gave them."""
    folder = FIXTURES / "format1_captioners"
    pinned = json.loads((folder / "captions.json").read_text())[decoder]
    captioner = Captioner.from_pretrained(folder / decoder)
    images = [load_image(folder / f"image{i}.png") for i in range(3)]
    for beam, expected in pinned.items():
        got = [[c.text, c.score] for c in captioner.caption(images, beam_size=int(beam))]
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert [g[1] for g in got] == pytest.approx([e[1] for e in expected], abs=1e-4)
    captioner.save_pretrained(tmp_path / "resaved")  # and now in the current format
    meta = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert meta["format"] == 2 and set(meta["model"]["decoder"]) == set(
        type(captioner.config.decoder).model_fields
    )
    again = Captioner.from_pretrained(tmp_path / "resaved")
    assert [c.text for c in again.caption(images)] == [c.text for c in captioner.caption(images)]


def test_a_saved_model_config_is_checked_when_it_loads(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "format1_captioners" / "transformer", folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["format"] = 2
    meta["model"]["encoder"] = {"name": "small_cnn", "image_size": 32, "width": 16}
    meta["model"]["decoder"] = {"name": "transformer", "hidden_size": 32, "num_heads": 5}
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        ConfigError, match=r"config.json: decoder: num_heads \(5\) must divide hidden_size \(32\)$"
    ):
        Captioner.from_pretrained(folder)


def test_no_file_under_src_names_a_machine_path() -> None:
    suffixes = {".py", ".json", ".yaml", ".md", ".txt", ".html", ".js", ".css"}
    offenders = []
    for path in (ROOT / "src").rglob("*"):
        if path.is_file() and path.suffix in suffixes:
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [
                f"{path.relative_to(ROOT)}: {m}"
                for m in ("/work/", "/home/", "/root/", "/Users/", "REFERENCE.md")
                if m in text
            ]
    assert not offenders


def test_hub_names_are_looked_up_locally_when_the_hub_is_unreachable(monkeypatch) -> None:
    from finecap import hub

    seen: dict = {}

    class Loader:
        @classmethod
        def from_pretrained(cls, name: str, **kwargs) -> None:
            seen.update(kwargs)
            raise OSError("not in the cache")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(hub.WeightsNotFoundError, match="not available offline"):
        hub.from_pretrained(Loader, "org/absent-model", "test")
    assert seen == {"local_files_only": True}
    seen.clear()
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)  # online: the hub may be asked
    with pytest.raises(hub.WeightsNotFoundError):
        hub.from_pretrained(Loader, "org/absent-model", "test")
    assert seen == {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline()


def test_grammar_settings_name_every_negative_kind_the_code_makes() -> None:
    from finecap.clip.config import NEGATIVE_KINDS
    from finecap.clip.grammar import NEGATIVES

    assert tuple(NEGATIVES) == NEGATIVE_KINDS


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lr.x=1", "optim.lr is 0.001, not a section"),
        ("model.encoder.name=[x]", "`name` (which encoder) must be a string"),
        ("model.decoder={name: transformer, hidden_size: 64, num_heads: 4, dropout: 2}", "dropout"),
    ],
)
def test_odd_overrides_are_config_errors(override: str, expected: str) -> None:
    assert expected in _error([override])


def test_duplicate_reward_terms_are_refused_at_load() -> None:
    message = _error(
        ["scst.rewards=[{name: cider}, {name: cider, weight: 2}]"], "scst_scenes_cider"
    )
    assert "cider given twice" in message


def test_output_dir_is_taken_literally(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("2024", "yes", "#x"):
        args = ["train", "--config", RECIPE, "--output-dir", name, "--print-config"]
        assert main(args) == 0
        assert yaml.safe_load(capsys.readouterr().out)["output_dir"] == name


def test_broken_model_folders_are_one_message(tmp_path: Path) -> None:
    from finecap.errors import UserError

    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "format1_captioners" / "lstm", folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="model.safetensors: the weights do not load"):
        Captioner.from_pretrained(folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["model"]["encoder"]["name"] = "no_such_encoder"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="not a model config finecap can read"):
        Captioner.from_pretrained(folder)


def test_version_and_help(capsys: pytest.CaptureFixture) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"finecap {version('finecap')}"
    assert main(["--help"]) == 0
    assert "recipes" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
