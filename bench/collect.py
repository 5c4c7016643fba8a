"""Assemble BENCHMARKS.md from the per-benchmark results in bench/results/*.md.

    python bench/collect.py

Each benchmark script writes its own results file (command, machine, medians, ratios);
this only puts them in one place, in a fixed order.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["caption", "cider", "eval", "rewards", "scst", "memory"]

HEADER = """# Benchmarks

Every section names the command that produced it and the machine it ran on; numbers are
medians of several runs, and ratios compare against a baseline measured in the same run.
Re-run a benchmark, then `python bench/collect.py` to rebuild this file.
"""


def main() -> None:
    results = {p.stem: p for p in (ROOT / "bench" / "results").glob("*.md")}
    names = [n for n in ORDER if n in results] + sorted(set(results) - set(ORDER))
    body = [results[n].read_text().strip() for n in names]
    (ROOT / "BENCHMARKS.md").write_text(HEADER + "\n" + "\n\n".join(body) + "\n")


if __name__ == "__main__":
    main()
