"""Markdown tables from `ssmc bench --json` records, for RESULTS.md.

    python benchmarks/summarize.py benchmarks/results/*.json
"""

from __future__ import annotations

import json
import sys

from ssmc.bench.report import fmt_time


def _pct(x):
    return "-" if x is None else f"{100 * x:.2f}%"


def table(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"**{doc['subject']['description']}**, {s['pass']}, torch threads "
             f"{doc['device']['torch_threads']}, load average {doc['device']['load_average']} -> "
             f"{doc['device'].get('load_average_end')}, {doc['date']}",
             "",
             "| L | implementation | median | ssmc faster by | roofline | exp-bound | note |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for case in doc["cases"]:
        for name, r in case["results"].items():
            if r["status"] != "ok":
                lines.append(f"| {case['seqlen']} | {name} | {r['status']} | | | | "
                             f"{r['message']} |")
                continue
            ratio = case["ratios"].get(name)
            note = f"setup {r['setup_s']:.1f} s" if r.get("setup_s", 0) > 1 else ""
            lines.append(f"| {case['seqlen']} | {name} | {fmt_time(r['median_s'])} | "
                         f"{f'{ratio:.1f}x' if ratio else '-'} | "
                         f"{_pct(case['roofline_fraction'].get(name))} | "
                         f"{_pct(case['exp_bound_fraction'].get(name))} | {note} |")
        if case["roofline"]:
            r = case["roofline"]
            lines.append(f"| {case['seqlen']} | *roofline* | {fmt_time(r['time_s'])} | | | | "
                         f"{r['bound']}-bound; exp bound {fmt_time(r['exp_s'])} |")
    labels = "; ".join(f"`{i['name']}` = {i['label']}" for i in doc["implementations"])
    lines += ["", labels]
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"<!-- {path} -->")
        print(table(json.loads(open(path).read())))
        print()
