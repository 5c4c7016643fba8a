"""Matching a predictions file (COCO results: `[{"image_id", "caption"}]`) to a dataset split.

An `image_id` is the dataset's id of the image (see `ID_RULE`; JSON numbers or numeric strings)
or its file name: the path as the dataset writes it, its base name, or that without its
extension ("1000268201_693b08cb0e.jpg" or "1000268201_693b08cb0e" for Flickr8k). A JSON number
is always an id. A string that is both one image's id and another's file name, or a name
several images share, is refused as ambiguous rather than guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from finecap.errors import UserError

ID_RULE = (
    "ids are the cocoid where the dataset has one, else the imgid; Flickr8k's are positions in "
    "the sorted list of its file names; or give the image's file name (or its stem)"
)


class PredictionsError(UserError, ValueError):
    """Predictions do not match the dataset split; the message names the file and the ids."""


def align_predictions(
    predictions: Mapping[int | str, str],
    split_ids: Sequence[int],
    split_of: Mapping[int, str],
    source: str,
    split: str,
    allow_missing: bool = False,
    names: Mapping[str, int | None] | None = None,
) -> tuple[dict[int, str], int]:
    """Match COCO-results ids to the split's image ids.

    `split_of` maps every dataset image id to its split; `names` (`CaptionCorpus.
    ids_by_name`) maps file names to ids, None for a name several images share. Returns
    ({image_id: caption} for the split, number of predictions for images of other splits,
    which are ignored). Raises `PredictionsError` for ids not in the dataset, duplicates, and
    (unless `allow_missing`) split images without a caption.
    """
    in_split = set(split_ids)
    resolve = _resolver(split_of, names or {}, source)
    aligned: dict[int, str] = {}
    elsewhere = 0
    for key, caption in predictions.items():
        image_id = resolve(key)
        if image_id is None:
            raise PredictionsError(
                f"{source}: image_id {key!r} is not an image of the dataset ({ID_RULE})"
            )
        if image_id not in in_split:
            elsewhere += 1
            continue
        if image_id in aligned:
            raise PredictionsError(f"{source}: image_id {image_id} has two captions")
        aligned[image_id] = caption
    missing = [i for i in split_ids if i not in aligned]
    if missing and not allow_missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise PredictionsError(
            f"{source}: {len(missing)} of {len(split_ids)} {split} images have no caption "
            f"(image_id {shown}){_split_hint(predictions, resolve, split_of, split)}; pass "
            "--allow-missing to score only the images every system covers"
        )
    return aligned, elsewhere


def _split_hint(predictions, resolve, split_of, split: str) -> str:  # noqa: ANN001
    """ ", but they caption the test split: pass --split test" when most predictions are of
    one other split (the commonest mistake: test captions scored on the default split)."""
    counts: dict[str, int] = {}
    for key in predictions:
        image_id = resolve(key)
        if image_id is not None and split_of[image_id] != split:
            counts[split_of[image_id]] = counts.get(split_of[image_id], 0) + 1
    if not counts:
        return ""
    other = max(counts, key=counts.get)
    if counts[other] * 2 < len(predictions):
        return ""
    return f", but {counts[other]} of its captions are of {other} images: pass --split {other}"


def _resolver(
    split_of: Mapping[int, str], names: Mapping[str, int | None], source: str
) -> Callable[[int | str], int | None]:
    """key -> the dataset image id it names (None: no image), refusing ambiguous keys."""
    by_text = {str(i): i for i in split_of}

    def resolve(key: int | str) -> int | None:
        text = str(key).strip()
        by_id = by_text.get(text)
        if isinstance(key, int) or text not in names:
            return by_id
        by_name = names[text]
        if by_name is None:
            raise PredictionsError(
                f"{source}: image_id {key!r} is the file name of several images; give their ids"
            )
        if by_id is not None and by_id != by_name:
            raise PredictionsError(
                f"{source}: image_id {key!r} is ambiguous: the id of one image and the file name "
                f"of another (image_id {by_name}); write the id as a JSON number, or the file "
                "name with its extension"
            )
        return by_name

    return resolve
