"""Run the benchmarks:  python -m benchmarks [NAME ...]

With no names, every benchmark runs, in the order of ``ALL``, and the run rewrites BENCHMARKS.md and
benchmarks/growth.png. With names, only those run and their table is printed; no file is written.
"""

from __future__ import annotations

import sys
import time

import anyio

from benchmarks.common import REPO, Row, machine
from benchmarks.plot import write_growth
from benchmarks.suite import ALL, run

GROWTH = "benchmarks/growth.png"


def render(rows: list[Row], seconds: float, growth: str | None = None) -> str:
    info = machine()
    lines = [
        "# Benchmarks",
        "",
        "Every figure is measured side by side in one run (ratios or differences against a baseline run in the",
        "same loop), with the median and the interquartile range over repeated runs. The upstream is the offline",
        "stand-in of `/v1/responses` on loopback, in its own process. These machines are shared 2-core VMs:",
        "absolute times move by a factor of two between runs (the direct POST baseline with them), ratios",
        "much less; differences of milliseconds move the most (the overhead row: 1.2 to 2.8 ms in recent runs;",
        "the continuation ratio: 0.76 to 1.94; in the 1.94 run the late direct POSTs slowed by half too).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['os']}, "
        f"Python {info['python']}. Run took {seconds:.0f} s on {time.strftime('%Y-%m-%d')}.",
        "",
        "Reproduce: `python3 -m venv .venv && .venv/bin/pip install -e '.[test,bench]' "
        "&& .venv/bin/python -m benchmarks`",
        "",
        "| benchmark | figure | target | met |",
        "|---|---|---|---|",
    ]
    for row in rows:
        met = "n/a" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.name} | {row.figure} | {row.target} | {met} |")
    if growth is not None:
        lines += [
            "",
            "## Growth curves",
            "",
            "What the bridge adds as a conversation grows and as more tools are offered (the continuation and",
            f"tools rows above):\n\n![Growth curves]({growth})",
        ]
    lines += ["", "## Details", ""]
    lines += [f"* **{row.name}**: {row.detail}" for row in rows if row.detail]
    return "\n".join(lines) + "\n"


def main() -> None:
    names = sys.argv[1:] or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}")
    full = not sys.argv[1:]  # only a run with no names rewrites the files
    started = time.perf_counter()
    rows = anyio.run(run, names)
    seconds = time.perf_counter() - started
    if not full:  # a subset: its table on stdout, no file touched
        print(render(rows, seconds))
        return
    plots = [row.plot for row in rows if row.plot is not None]
    growth = GROWTH if write_growth(plots, REPO / GROWTH) else None
    if growth is not None:
        print(f"wrote {GROWTH}", file=sys.stderr)
    elif plots:
        print(f"{GROWTH} not drawn: install matplotlib (pip install matplotlib)", file=sys.stderr)
    text = render(rows, seconds, growth)
    (REPO / "BENCHMARKS.md").write_text(text)
    print("wrote BENCHMARKS.md", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
