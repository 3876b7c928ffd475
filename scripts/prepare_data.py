"""Write training and evaluation questions as verl parquet files, with the release's prompt.

    python scripts/prepare_data.py --dataset openr1 --out data/      # Elliott/Openr1-Math-46k-8192
    python scripts/prepare_data.py --dataset valid --out data/       # the release's validation mix (no network)
    python scripts/prepare_data.py --dataset eval --out data/        # the nine benchmarks
    python scripts/prepare_data.py --dataset all --out data/
    python scripts/prepare_data.py --dataset gpqa_diamond --out data/
    python scripts/prepare_data.py --from-jsonl my.jsonl --source openr1 --out data/   # convert a local file

--dataset valid writes <out>/math_valid.parquet, the release's in-training validation mix
(AIME24 and AIME25 x8, AMC x4, MATH-500, Minerva, OlympiadBench: 2,259 rows), from the copy
shipped in exgrpo_verl/data/eval/, after checking its rows and its mix; the recipes read it there.
Downloads need network access and the `datasets` package (GPQA is gated: log in with
`huggingface-cli login` after accepting its terms). Each source is written to
<out>/<source>.parquet and validated first. --repeat copies evaluation rows k times (e.g.
"paper": 32 for AIME/AMC) for verl's in-training validation, which samples once per row;
scripts/evaluate.py does not need it (it samples k per question itself).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

from exgrpo_verl.data import (
    EVAL_DATA_DIR,
    EVAL_SOURCES,
    OPENR1,
    SOURCES,
    RowValidationError,
    download_records,
    read_records,
    records_to_rows,
    repeat_rows,
    unique_questions,
    validate_rows,
    write_rows,
)
from exgrpo_verl.evaluation.metrics import samples_per_question

DATASET_GROUPS = {"openr1": [OPENR1.name], "eval": list(EVAL_SOURCES), "all": [OPENR1.name, *EVAL_SOURCES]}
VALID = "valid"
VALID_FILE = "math_valid.parquet"
# The release's validation mix: data_source -> (unique questions, rows); AIME x8, AMC x4 copies.
VALID_MIX = {
    "aime": (30, 240),
    "aime25": (30, 240),
    "amc": (83, 332),
    "math": (500, 500),
    "minerva": (272, 272),
    "olympiad_bench": (675, 675),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--dataset", choices=[*DATASET_GROUPS, *EVAL_SOURCES, VALID], help="download and convert (valid: local copy)"
    )
    given.add_argument("--from-jsonl", type=Path, help="convert a local JSONL file of --source records")
    given.add_argument("--from-parquet", type=Path, help="convert a local parquet file of --source records")
    parser.add_argument("--source", choices=sorted(SOURCES), help="what the local file holds (with --from-*)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--limit", type=int, help="only the first N records of each source")
    parser.add_argument("--repeat", help="evaluation rows only: copies per question, 'paper', K or 'aime=32,*=1'")
    args = parser.parse_args(argv)
    if (args.from_jsonl or args.from_parquet) and not args.source:
        parser.error("--from-jsonl / --from-parquet need --source (e.g. --source openr1)")
    return args


def convert(source_name: str, records: list[dict], out: Path, repeat: str | None) -> Path:
    source = SOURCES[source_name]
    rows = records_to_rows(records, source)
    if repeat and source is not OPENR1:
        rows = repeat_rows(rows, samples_per_question(repeat))
    path = write_rows(rows, out / f"{source.name}.parquet")
    print(f"{source.name}: {len(records)} records -> {len(rows)} rows -> {path}")
    return path


def check_validation_mix(rows: pd.DataFrame, source: Path) -> None:
    """Raise RowValidationError unless rows are verl rows holding exactly VALID_MIX."""
    validate_rows(rows, require_unique_index=False)  # the release repeats a question under one index
    unique = unique_questions(rows)
    mix = {
        data_source: (len(group), int(group["repeats"].sum()))
        for data_source, group in unique.groupby("data_source", sort=False)
    }
    if mix != VALID_MIX:
        raise RowValidationError(
            f"{source}: (questions, rows) per data_source is {mix}, expected the release's {VALID_MIX}; "
            "fix: restore the file from the repository (git checkout exgrpo_verl/data/eval/)"
        )


def write_validation_mix(out: Path, source: Path = EVAL_DATA_DIR / VALID_FILE) -> Path:
    """Check the shipped validation mix and copy it, byte for byte, to out/math_valid.parquet."""
    check_validation_mix(pd.read_parquet(source), source)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(shutil.copyfile(source, out / VALID_FILE))
    print(f"{VALID}: the release's validation mix, {sum(rows for _, rows in VALID_MIX.values())} rows -> {path}")
    return path


def main(argv=None) -> None:
    args = parse_args(argv)
    local_file = args.from_jsonl or args.from_parquet
    if local_file:
        convert(args.source, read_records(local_file)[: args.limit], args.out, args.repeat)
        return
    if args.dataset in (VALID, "all"):
        write_validation_mix(args.out)
    if args.dataset == VALID:
        return
    failures = []
    for name in DATASET_GROUPS.get(args.dataset, [args.dataset]):
        try:
            records = download_records(SOURCES[name], args.limit)
        except Exception as error:  # report every source that failed, not only the first
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        convert(name, records, args.out, args.repeat)
    if failures:
        sys.exit("could not download:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
