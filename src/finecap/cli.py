"""The `finecap` command: `finecap COMMAND [SUBCOMMAND] [OPTIONS]`.

Each command's options are a typed settings class (`finecap.config.Settings`) in its module
under `finecap.commands`; tyro builds the parser from it (flags, types, defaults and help from
the field docstrings), so no command restates a default or copies parsed values by hand. A
module lists its commands in `COMMANDS = {SUBCOMMAND or "": (OptionsClass, handler)}`, where
`handler(options) -> int` returns the exit status. Modules are imported only when their
command runs, so `finecap --help` stays fast.

Every failure a user can fix (`finecap.errors.UserError`: a bad setting, a missing file,
weights that are not downloaded) is printed as one message and exits 2, without a traceback.
A reader that stops early (`finecap caption ... | head -1`) ends the command quietly with
status 141, as a shell reports a tool killed by SIGPIPE.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys

# OpenMP threads that spin while waiting starve every other process on a small shared CPU
# (measured here: a captioner trained 10x slower beside one other job). Sleeping threads
# cost little on an idle machine. Set before torch is imported; the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# name -> (module, help, {subcommand: help} or None), in the order `finecap --help` lists them.
TABLE: dict[str, tuple[str, str, dict[str, str] | None]] = {
    "caption": ("finecap.commands.caption", "caption images or folders of images", None),
    "scenes": (
        "finecap.commands.scenes",
        "the embedded scenes world (our CLEVR)",
        {"generate": "generate images, dataset.json (Karpathy format) and finecapeval.csv"},
    ),
    "train": ("finecap.commands.train", "train a captioner from a recipe (MLE or SCST)", None),
    "recipes": ("finecap.commands.train", "list the shipped training recipes", None),
    "evaluate": (
        "finecap.commands.evaluate",
        "score captions: n-gram, CLIP-S, retrieval, FineCapEval, scene facts, BERTScore, ...",
        None,
    ),
    "pairwise": (
        "finecap.commands.pairwise",
        "human A/B comparison of two systems",
        {
            "make": "write the blind comparison page and its key (PAGE.key.json)",
            "tally": "un-blind judgments with the key: win/lose/tie, sign test, kappa",
            "judge": "answer a page from the ground-truth scenes (--oracle)",
        },
    ),
    "clip": (
        "finecap.commands.clip",
        "train a CLIP for rewards and evaluation; probe what it sees",
        {
            "train": "train a CLIP (Hugging Face format) on descriptions and references",
            "probe": "attribute-binding probe: true text vs one fact changed, per kind",
        },
    ),
    "grammar": (
        "finecap.commands.grammar",
        "grammar head (fluency reward g(c))",
        {
            "train": "fine-tune a CLIP text encoder with a grammar head",
            "score": "print g(c), the probability each text is fluent",
        },
    ),
    "discriminator": (
        "finecap.commands.discriminator",
        "Chaffin et al.'s discriminator (references vs generated captions)",
        {"train": "pre-train it for the discriminator reward's `pretrained:`"},
    ),
    "features": (
        "finecap.commands.features",
        "feature store: encoder region features and CLIP embeddings, extracted once",
        {"extract": "extract features for every image into a memory-mapped store"},
    ),
    "serve": (
        "finecap.commands.serve",
        "HTTP captioning service and web page",
        None,
    ),
    "reproduce": (
        "finecap.commands.reproduce",
        "scenes world -> CLIP, grammar head, MLE and SCST captioners -> metrics + report",
        None,
    ),
}


def _overview(prog: str, entries: dict[str, str]) -> str:
    width = max(map(len, entries)) + 2
    lines = [f"usage: {prog} COMMAND [OPTIONS]   ({prog} COMMAND --help for its options)"]
    if prog == "finecap":
        lines.append("       finecap --version")
    lines.append("")
    lines += [f"  {name:<{width}}{text}" for name, text in entries.items()]
    return "\n".join(lines)


def _words(argv: list[str]) -> tuple[str, str, list[str]] | int:
    """(command, subcommand or "", the rest of argv), or an exit status after printing help."""
    commands = {name: text for name, (_, text, _) in TABLE.items()}
    if argv[:1] == ["--version"]:
        from importlib.metadata import version

        print(f"finecap {version('finecap')}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview("finecap", commands), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in TABLE:
        print(f"finecap: unknown command {name!r}\n\n{_overview('finecap', commands)}")
        return 2
    subcommands = TABLE[name][2]
    if subcommands is None:
        return name, "", rest
    if not rest or rest[0] in ("-h", "--help") or rest[0] not in subcommands:
        known = _overview(f"finecap {name}", subcommands)
        if rest and rest[0] not in ("-h", "--help"):
            print(f"finecap {name}: unknown subcommand {rest[0]!r}\n", file=sys.stderr)
        print(known, file=sys.stdout if rest[:1] in (["-h"], ["--help"]) else sys.stderr)
        return 0 if rest[:1] in (["-h"], ["--help"]) else 2
    return name, rest[0], rest[1:]


def parse(argv: list[str]) -> tuple[str, object, object] | int:
    """(prog, options, handler) for a command line, or the exit status of a help/usage error."""
    import tyro

    words = _words(argv)
    if isinstance(words, int):
        return words
    name, sub, rest = words
    module_name, text, subcommands = TABLE[name]
    options_class, handler = importlib.import_module(module_name).COMMANDS[sub or name]
    prog = f"finecap {name} {sub}".strip()
    description = (subcommands or {}).get(sub, text)
    try:
        options = tyro.cli(
            options_class,
            args=rest,
            prog=prog,
            description=inspect.cleandoc(options_class.__doc__ or description),
            config=(tyro.conf.OmitArgPrefixes,),
        )
    except SystemExit as exit_:  # --help, or a value tyro or the settings class refused
        return int(exit_.code or 0)
    return prog, options, handler


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (POLLERR / POLLHUP on its end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or no file descriptor
        return True


def main(argv: list[str] | None = None) -> int:
    try:
        status = _run(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at exit
        return status
    except BrokenPipeError:  # `finecap caption ... | head -1`, `finecap --help | head`
        if not _stdout_reader_gone():
            raise  # some other pipe (a subprocess): a bug to see, not a reader that left
        # Send what is still buffered to devnull, so the flush at exit does not fail again.
        with contextlib.suppress(OSError, ValueError):  # ValueError: no file descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run(argv: list[str]) -> int:
    from finecap.errors import UserError

    parsed = parse(argv)
    if isinstance(parsed, int):
        return parsed
    prog, options, handler = parsed
    try:
        return int(handler(options) or 0)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
