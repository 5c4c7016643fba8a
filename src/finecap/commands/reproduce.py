"""`finecap reproduce --out DIR [--quick] [--jobs N]`: the papers' tables on the scenes world."""

from __future__ import annotations

from finecap.config import PositiveInt, Settings


class ReproduceOptions(Settings):
    """Scenes world -> CLIP, grammar head, MLE and SCST captioners -> DIR/metrics.json and
    DIR/report.html (Cho et al. 2022 and Chaffin et al. 2022 on the scenes world). Rerunning
    on the same DIR continues where it stopped."""

    out: str
    """Output folder (resumes if it exists)."""
    quick: bool = False
    """A reduced run (minutes, for CI)."""
    jobs: PositiveInt = 2
    """Steps run side by side, each in its own process; the CPU threads are split."""


def run(options: ReproduceOptions) -> int:
    from pathlib import Path

    from finecap.reproduce import FULL, QUICK, reproduce

    reproduce(Path(options.out), QUICK if options.quick else FULL, jobs=options.jobs)
    return 0


COMMANDS = {"reproduce": (ReproduceOptions, run)}
