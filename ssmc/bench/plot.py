"""Time against sequence length on log-log axes: one line per implementation, and the roofline.

On log-log axes linear growth in L is a line of slope 1, so a kernel that scales linearly runs
parallel to the roofline and the gap between them is the fraction left on the table.
"""

from __future__ import annotations

from ssmc.errors import SsmcError


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise SsmcError("--plot needs matplotlib: pip install 'ssmc[bench]'") from None
    return matplotlib


def plot(doc: dict, path) -> None:
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    labels = {i["name"]: i["label"] for i in doc["implementations"]}
    for name in labels:
        pts = [(c["seqlen"], c["results"][name]["median_s"]) for c in doc["cases"]
               if c["results"].get(name, {}).get("status") == "ok"]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=f"{name}: {labels[name]}"[:70])
    roof = [(c["seqlen"], c["roofline"]["time_s"]) for c in doc["cases"] if c["roofline"]]
    if roof:
        xs, ys = zip(*roof)
        ax.plot(xs, ys, "k--", label=f"roofline ({doc['target']['name']})")
    ax.set_xscale("log", base=2)
    ax.set_xticks([c["seqlen"] for c in doc["cases"]], [str(c["seqlen"]) for c in doc["cases"]])
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("time per call (s), median")
    s = doc["settings"]
    ax.set_title(f"{doc['subject']['name']} {s['pass']}, batch {s['batch']} {s['dtype']}, "
                 f"{doc['target']['name']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
