"""Write the toy char-hunt task's parquet files for the CPU recipe: 64 training questions and 8
validation questions (the sizes the end-to-end tests use).

    python recipes/tools/char_hunt_data.py --out outputs/data/char_hunt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from exgrpo_verl.tasks import char_hunt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for train.parquet and val.parquet")
    args = parser.parse_args(argv)
    print(char_hunt.write_parquet(args.out / "train.parquet", 64, seed=0))
    # Validation indices kept apart from the training ones (questions are tracked by index).
    print(char_hunt.write_parquet(args.out / "val.parquet", 8, seed=1, split="test", first_index=10_000))


if __name__ == "__main__":
    main()
