"""`finecap grammar train|score`: Cho et al.'s grammar head on a CLIP text encoder.

Options left out keep the defaults of `GrammarTrainConfig` (`finecap.clip.grammar`).
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("grammar", help="grammar head (fluency reward g(c))")
    sub = parser.add_subparsers(dest="grammar_command", required=True)
    train = sub.add_parser(
        "train",
        help="fine-tune a CLIP text encoder with a grammar head",
        description="Train the grammar head on references vs corrupted copies (repeat, remove, "
        "insert, swap, shuffle) with the CLIP contrastive loss, vision tower frozen; save the "
        "fine-tuned CLIP + head to OUT and write OUT/grammar_eval.json.",
    )
    train.add_argument("--clip", required=True, help="CLIP folder or hub name to start from")
    train.add_argument("--dataset", required=True, help="dataset file (train split used)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--epochs", type=int, help="passes over the training references (default 6)")
    train.add_argument("--batch-size", type=int, help="default 64")
    train.add_argument(
        "--lr", type=float, help="AdamW lr (default 5e-4; Cho et al.: 1e-4), weight decay 0.01"
    )
    train.add_argument(
        "--description-prob", type=float, help="positives drawn from descriptions (0.3)"
    )
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument("--eval-split", help="default test")
    train.add_argument("--threads", type=int, dest="num_threads", help="torch CPU threads")
    train.set_defaults(func=run_train)

    score = sub.add_parser("score", help="print g(c), the probability each text is fluent")
    score.add_argument("--model", required=True, help="grammar model folder")
    score.add_argument("texts", nargs="+", metavar="TEXT")
    score.set_defaults(func=run_score)


def run_train(args: argparse.Namespace) -> int:
    from finecap.clip.grammar import GrammarTrainConfig, train_grammar

    fields = GrammarTrainConfig.__dataclass_fields__
    cfg = GrammarTrainConfig(
        **{k: v for k, v in vars(args).items() if k in fields and v is not None}
    )
    result = train_grammar(args.clip, args.dataset, args.out, cfg)
    print(json.dumps(result["accuracy"], indent=2))
    print(f"grammar model saved to {args.out} (train {result['train_seconds']} s)")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from finecap.clip.grammar import GrammarModel

    model = GrammarModel.from_pretrained(args.model)
    for text, g in zip(args.texts, model.score(args.texts).tolist(), strict=True):
        print(f"{g:.4f}\t{text}")
    return 0
