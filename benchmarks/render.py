"""Fills the result tables of the docs from the result data (benchmarks/results/<bench>.jsonl).

A table in a Markdown file is a marker naming the record, the rendered table, and an end marker:

    <!-- result bench=bench_op device=H200 commit=36fb08a columns="shape (B,C,H,W)|dtype|pass" -->
    ...
    <!-- /result -->

`device` (a part of the machine's name) and `commit`, `tag` (a run's BATCHCAM_RESULT_TAG, "none"
for untagged runs) and any other field of a record (e.g. `dtype=float16`) select records; the last
one selected, the newest, is rendered; `columns` keeps those columns, in that order. Without a
commit the newest run on that device is shown, so that a rerun of a benchmark followed by this
script updates the docs.

    python benchmarks/render.py            # rewrites docs/*.md and README.md in place
    python benchmarks/render.py --check    # exits 1 if a table differs from its data
"""
import argparse
import glob
import json
import os
import re
import shlex
import sys

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHMARKS)
RESULTS = os.path.join(BENCHMARKS, "results")
BLOCK = re.compile(r"(<!-- result (?P<spec>.*?) -->\n)(?P<body>.*?)(<!-- /result -->)", re.S)


def records(bench):
    path = os.path.join(RESULTS, bench + ".jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"render: no result data {os.path.relpath(path, ROOT)}")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def select(spec):
    """The newest record of spec["bench"] matching the spec's device, commit and tag."""
    chosen = None
    for record in records(spec["bench"]):
        machine = record["machine"]
        if spec.get("device", "").lower() not in machine["device"].lower():
            continue
        if "commit" in spec and machine.get("commit") != spec["commit"]:
            continue
        if "tag" in spec and (record.get("tag") or "none") != spec["tag"]:
            continue
        fields = {k: v for k, v in spec.items() if k not in ("bench", "device", "commit", "tag", "columns")}
        if any(str(record.get(k)) != v for k, v in fields.items()):
            continue
        chosen = record
    if chosen is None:
        raise SystemExit(f"render: no record matches {spec}")
    return chosen


def table(record, columns=None):
    if record["bench"] == "compare":  # a training comparison: its own table (over seeds: two tables)
        sys.path.insert(0, os.path.join(ROOT, "python"))
        from batchcam.compare import compare_table
        from batchcam.study import study_tables

        return study_tables(record["summary"]) if "summary" in record else compare_table(record["results"])
    header, rows = record["header"], record["rows"]
    keep = [header.index(c) for c in columns.split("|")] if columns else range(len(header))
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(str(row[i]) for i in keep) + " |" for row in rows]
    return "\n".join(lines)


def render_block(match):
    spec = dict(item.split("=", 1) for item in shlex.split(match["spec"]))
    record = select(spec)
    machine = record["machine"]
    source = (f"*{machine['device']}, {machine['date'][:10]}, commit {machine.get('commit') or 'unrecorded'}: "
              f"`benchmarks/results/{record['bench']}.jsonl`*")
    return f"{match.group(1)}{table(record, spec.get('columns'))}\n\n{source}\n{match.group(4)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="Markdown files (default: docs/*.md and README.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a table is stale")
    args = parser.parse_args()
    files = args.files or sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]
    stale = []
    for path in files:
        text = open(path).read()
        rendered = BLOCK.sub(render_block, text)
        if rendered != text:
            stale.append(os.path.relpath(path, ROOT))
            if not args.check:
                with open(path, "w") as f:
                    f.write(rendered)
    if args.check and stale:
        print("render: tables differ from the result data in " + ", ".join(stale) + "; run python benchmarks/render.py")
        return 1
    print(("rendered: " if stale else "up to date: ") + (", ".join(stale) or f"{len(files)} files"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
