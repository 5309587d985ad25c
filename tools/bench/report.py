"""Turn the JSON rows written by tools/bench/bench_*.py into the tables of docs/benchmarks.md.

    python tools/bench/report.py bench-results/ docs/benchmarks.md

Each bench script writes a list of rows {"bench", "case", "ours", "peer", "unit", "ratio", ...}
(ratio = peer time / our time, or our rate / peer rate: above 1 means we are faster). The
tables between the markers `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` are replaced;
the rest of the document (the prose explaining each gap) is kept.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def pick(row: dict, *names):
    for name in names:
        if name in row:
            return row[name]
    return None


def table(rows: list[dict]) -> str:
    meta = rows[0].get("meta", {}) if rows else {}
    lines = []
    if meta:
        lines.append("Run: " + ", ".join(f"{k} {v}" for k, v in meta.items()) + "\n")
    peer = rows[0].get("peer_label", "transformers (torch CPU)") if rows else ""
    better = "ours faster" if peer.startswith("transformers") else "ours better"
    lines.append(f"| case | ours | {peer} | unit | ratio (>1: {better}) |")
    lines.append("|---|---|---|---|---|")
    for r in rows:
        ours, peer = pick(r, "ours", "ours_s"), pick(r, "peer", "peer_s")
        ratio = pick(r, "ratio", "ratio_peer_over_ours")
        lines.append(f"| {r['case']} | {fmt(ours)} | {fmt(peer)} | {r.get('unit', '')} | {fmt(ratio)} |")
    return "\n".join(lines)


def main(results_dir: str, doc_path: str) -> int:
    doc = pathlib.Path(doc_path)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    for path in sorted(pathlib.Path(results_dir).glob("*.json")):
        name = path.stem
        block = f"<!-- bench:{name} -->\n{table(json.loads(path.read_text()))}\n<!-- /bench:{name} -->"
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        text = pattern.sub(lambda m: block, text) if pattern.search(text) else text + f"\n## {name}\n\n{block}\n"
        print(table(json.loads(path.read_text())))
    doc.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
