"""`finecap reproduce --out DIR [--quick] [--jobs N]`: the papers' tables on the scenes world."""

from __future__ import annotations

from finecap.config import PositiveInt, Settings


class ReproduceOptions(Settings):
    """Scenes world -> CLIP, grammar head, MLE and SCST captioners -> DIR/metrics.json and
    DIR/report.html (Cho et al. 2022 and Chaffin et al. 2022 on the scenes world). Rerunning
    on the same DIR continues where it stopped (killed or stopped with Ctrl-C, SIGTERM); one
    run per DIR at a time."""

    out: str
    """Output folder (resumes if it exists)."""
    quick: bool = False
    """A reduced run (minutes, for CI)."""
    jobs: PositiveInt = 2
    """Steps run side by side, each in its own process; the CPU threads are split."""
    features: bool = False
    """Extract the CLIP's image embeddings once into DIR/features (a feature store) for the
    SCST rewards and the evaluation."""


def run(options: ReproduceOptions) -> int:
    import sys
    from pathlib import Path

    from finecap.reproduce import FULL, QUICK, Stopped, reproduce

    try:
        settings = (QUICK if options.quick else FULL).replace(features=options.features)
        reproduce(Path(options.out), settings, jobs=options.jobs)
    except KeyboardInterrupt as stop:  # the workers are gone already; say how to go on
        how = "by SIGTERM" if isinstance(stop, Stopped) else "(Ctrl-C)"
        print(
            f"finecap reproduce: stopped {how}; the finished steps in {options.out} are kept: "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return Stopped.exit_code if isinstance(stop, Stopped) else 130
    return 0


COMMANDS = {"reproduce": (ReproduceOptions, run)}
