"""Appends a finished `python -m batchcam compare` run (its compare.json) to
benchmarks/results/compare.jsonl, with this machine's record and a tag, so that docs/ can render
its table (`benchmarks/render.py`, marker `bench=compare tag=...`).

    python benchmarks/tools/record_compare.py runs/methods --tag cam-methods
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import RESULTS, machine  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the --out folder of a finished compare")
    parser.add_argument("--tag", required=True, help="the record's tag, named by the docs' marker")
    args = parser.parse_args()
    path = os.path.join(args.run, "compare.json")
    try:
        with open(path) as f:
            run = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"record_compare: {path}: not a finished compare run ({e})") from None
    device = torch.device(run["results"][0]["device"])
    record = {"bench": "compare", "tag": args.tag, "machine": machine(device), **run}
    with open(os.path.join(RESULTS, "compare.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended {path} to {os.path.join(RESULTS, 'compare.jsonl')} (tag {args.tag})")


if __name__ == "__main__":
    sys.exit(main())
