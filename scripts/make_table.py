"""Put the summaries of several evaluation runs beside the paper's numbers: markdown, LaTeX, bar plot.

    python scripts/make_table.py --run "ExGRPO (ours)=results/exgrpo/summary.json" \\
        --run "on-policy (ours)=results/grpo/summary.json" --paper-model Qwen2.5-Math-7B --out results/table

Writes results.md, results.tex and results.png to --out. Columns: the six in-distribution
benchmarks, their average, the three out-of-distribution ones, their average (accuracy, %).
Each run's row counts the grader its evaluation counted (the paper's boxed grader by default);
a second row per run re-scores the maths with --also-grader (default math_verify; "none": no row).
An average over fewer benchmarks than the paper's is marked with a dagger. The paper's rows
for --paper-model: its headline averages for on-policy RLVR and ExGRPO, and for
Qwen2.5-Math-7B also ExGRPO's per-benchmark numbers.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from exgrpo_verl.evaluation.graders import MATH_GRADERS
from exgrpo_verl.evaluation.metrics import (
    IN_DISTRIBUTION,
    OUT_OF_DISTRIBUTION,
    PAPER_AVERAGES_PCT,
    PAPER_QWEN_MATH_7B_EXGRPO_PCT,
    domain_averages,
)

IN_AVERAGE, OOD_AVERAGE = "In-dist avg", "OOD avg"
COLUMNS = [*IN_DISTRIBUTION, IN_AVERAGE, *OUT_OF_DISTRIBUTION, OOD_AVERAGE]
PARTIAL = "\u2020"  # dagger: an average over fewer benchmarks than the paper's


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="LABEL=summary.json, or summary.json")
    parser.add_argument("--paper-model", default="Qwen2.5-Math-7B", choices=sorted(PAPER_AVERAGES_PCT))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--also-grader", choices=[*MATH_GRADERS, "none"], default="math_verify")
    return parser.parse_args(argv)


def run_row(summary: dict, math_grader: str | None = None) -> dict[str, tuple[float, bool]]:
    """A run's cells: column -> (accuracy %, partial). math_grader: re-score the benchmarks that
    counted a maths grader with this one (from the summary's accuracy_by_grader)."""
    accuracies = {}
    for name, result in summary["benchmarks"].items():
        regraded = math_grader is not None and result["grader"] in MATH_GRADERS
        accuracies[name] = result["accuracy_by_grader"][math_grader] if regraded else result["accuracy"]
    cells = {name: (100 * accuracy, False) for name, accuracy in accuracies.items() if name in COLUMNS}
    averages = domain_averages(accuracies)
    for column, domain in ((IN_AVERAGE, "in_distribution"), (OOD_AVERAGE, "out_of_distribution")):
        average = averages[domain]
        if average["accuracy"] is not None:
            cells[column] = (100 * average["accuracy"], bool(average["missing"]))
    return cells


def paper_rows(model: str) -> list[tuple[str, dict[str, tuple[float, bool]]]]:
    rows = []
    for method, label in (("on_policy", "on-policy"), ("exgrpo", "ExGRPO")):
        averages = PAPER_AVERAGES_PCT[model]
        cells = {
            IN_AVERAGE: (averages["in_distribution"][method], False),
            OOD_AVERAGE: (averages["out_of_distribution"][method], False),
        }
        if model == "Qwen2.5-Math-7B" and method == "exgrpo":
            cells.update({name: (value, False) for name, value in PAPER_QWEN_MATH_7B_EXGRPO_PCT.items()})
        rows.append((f"paper: {label} {model}", cells))
    return rows


def cell_text(cells: dict, column: str, missing: str) -> str:
    if column not in cells:
        return missing
    value, partial = cells[column]
    return f"{value:.1f}{PARTIAL if partial else ''}"


def to_markdown(rows) -> str:
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cell_text(cells, c, "–") for c in COLUMNS) + " |" for label, cells in rows]
    return "\n".join(lines) + f"\n\n{PARTIAL} average over the benchmarks present only.\n"


def to_latex(rows) -> str:
    def escape(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    header = " & ".join(["Model", *map(escape, COLUMNS)]) + r" \\"
    body = [
        " & ".join([escape(label)] + [cell_text(cells, c, "--").replace(PARTIAL, r"$^\dagger$") for c in COLUMNS])
        + r" \\"
        for label, cells in rows
    ]
    lines = [r"\begin{tabular}{l" + "r" * len(COLUMNS) + "}", r"\toprule", header, r"\midrule", *body]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(rows)
    figure, axes = plt.subplots(figsize=(1.1 * len(COLUMNS) + 2, 4))
    for number, (label, cells) in enumerate(rows):
        heights = [cells[column][0] if column in cells else math.nan for column in COLUMNS]
        axes.bar([c + (number - (len(rows) - 1) / 2) * width for c in range(len(COLUMNS))], heights, width, label=label)
    axes.set_xticks(range(len(COLUMNS)), COLUMNS, rotation=30, ha="right")
    axes.set_ylabel("accuracy (%)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


def main(argv=None) -> None:
    args = parse_args(argv)
    rows = []
    for run in args.run:
        label, _, path = run.rpartition("=")
        summary = json.loads(Path(path).read_text())
        label = label or Path(path).parent.name
        rows.append((label, run_row(summary)))
        if args.also_grader != "none":
            rows.append((f"{label} [{args.also_grader}]", run_row(summary, args.also_grader)))
    rows += paper_rows(args.paper_model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(to_markdown(rows), encoding="utf-8")
    (out / "results.tex").write_text(to_latex(rows), encoding="utf-8")
    plot(rows, out / "results.png")
    print(to_markdown(rows))
    print(f"wrote {out / 'results.md'}, {out / 'results.tex'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
