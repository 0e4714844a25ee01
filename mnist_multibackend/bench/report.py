"""Writing results: ``results.json`` and ``results.md`` for every benchmark, and the bench's table and chart."""

from __future__ import annotations

import json
from pathlib import Path

from mnist_multibackend.atomic import atomic_path, write_text
from mnist_multibackend.runtime import cpu_line

from . import side_by_side

TABLE_HEADER = ("| backend | device | replicas | impl | mode | batch | images/s | GFLOP/s | % of peak "
                "| compile s | Keras ÷ raw | load 1 min |")


def throughput_table(rows: list[dict]) -> str:
    """The matrix as one Markdown table: measured rows first, then the unavailable devices."""
    lines = [TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
    ok = sorted((r for r in rows if r["status"] == "ok"),
                key=lambda r: (r["device"], r["mode"] != "train", r["batch_size"], r["backend"], r["impl"]))
    for r in ok:
        ratio = r.get("keras_to_raw")
        lines.append(f"| {r['backend']} | {r['device']} | {r['replicas']} | {r['impl']} | {r['mode']} "
                     f"| {r['batch_size']} | {r['images_per_second']:,.0f} | {r['gflops']:.1f} "
                     f"| {r['pct_of_peak']:.1f} | {r['compile_seconds']:.2f} "
                     f"| {'' if ratio is None else f'{ratio:.2f}'} | {r['load_average_1min']:.2f} |")
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {r['device']} | {r['replicas']} | – | – | – "
                         f"| {r['status']} | | | | | |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The whole report: what was run where, the matrix, the peaks, and the data path."""
    m = results["machine"]
    flops = results["flops_per_image"]
    cost = ("not measured (no worker answered)." if flops is None else
            f"{flops['forward'] / 1e6:.2f} MFLOP per image forward "
            f"(2 x {flops['forward'] / 2e6:.2f} M multiply-adds of the convolutions and dense layers), "
            f"training counted as 3x: {flops['train'] / 1e6:.1f} MFLOP.")
    parts = [
        "# Benchmark results",
        "",
        f"Command: `{results['command']}` ({'quick' if results['quick'] else 'full'} run, "
        f"{results['finished_at']}, {results['wall_seconds']:.0f} s).",
        f"Machine: {cpu_line(m)}, GPU: {m['gpu'] or 'none'}; {m['system']}. "
        f"Load average (1 min) before the run: {results['load_average_before']:.2f}; "
        f"each row records its own.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items()) or 'not recorded'}.",
        f"Data: {results['data']}.",
        f"Model cost: {cost}",
        f"Each figure is the median of {results['windows']} timed windows of about "
        f"{results['window_seconds']} s after a warm-up window; compile s is the first step's extra time. "
        "% of peak: against the device's peak, the best window of dense fp32 2048 x 2048 matmuls that either "
        "backend reached on it in this run. "
        "Keras ÷ raw: the Keras row's images/s over the raw reference's, median of the rounds in which "
        "their windows alternated (below 1: Keras is slower). Train: `model.fit` epochs (without fit's "
        "set-up); infer: the compiled forward pass that `mnist-mb predict` runs (`inference.ForwardPass`), "
        "from host arrays to host results, as the raw reference is fed.",
        "",
        "## Throughput",
        "",
        throughput_table(results["rows"]),
        "",
    ]
    shares = [r["cpu_share"] for r in results["rows"] if r["status"] == "ok" and "cpu_share" in r]
    if shares:
        parts += [f"During its timed windows the measuring process got {100 * min(shares):.0f}-"
                  f"{100 * max(shares):.0f} % of the machine's {m['cores']} cores (its CPU time over wall time x cores; "
                  "the rest went to other programs, or the libraries left a core idle). The load averages "
                  "include the benchmark itself.", ""]
    unavailable = [r for r in results["rows"] if r["status"] != "ok"]
    if unavailable:
        parts += [*(f"- {r['backend']} {r['device']}: {r['status']}{exit_status(r)}: {r.get('reason', '')}"
                    for r in unavailable), ""]
    scaled = [r for r in results["rows"] if "scaling_efficiency" in r]
    if scaled:
        parts += ["## Data-parallel scaling (Keras training)", "",
                  "Speed-up: images/s with the replicas over one device's, same backend, device and global batch; "
                  "efficiency: speed-up over the replica count. Logical CPU devices share the same cores, so "
                  "on a CPU this shows the engine's overhead, not a speed-up.", "",
                  "| backend | device | replicas | batch | images/s | one device | speed-up | efficiency |",
                  "|---|---|---|---|---|---|---|---|"]
        parts += [f"| {r['backend']} | {r['device']} | {r['replicas']} | {r['batch_size']} | "
                  f"{r['images_per_second']:,.0f} | {r['images_per_second'] / r['speedup']:,.0f} | "
                  f"{r['speedup']:.2f}x | {r['scaling_efficiency']:.2f} |" for r in scaled]
        parts += [""]
    if results.get("side_by_side"):
        parts += side_by_side.markdown(results["side_by_side"])
    parts += ["## Dense fp32 matmul peak (2048 x 2048)", "", "| backend | device | GFLOP/s (best window) | median |",
              "|---|---|---|---|"]
    parts += [f"| {p['backend']} | {p['device']} | {p['gflops']:.0f} | {p['median_gflops']:.0f} |"
              for p in results["peaks"]]
    d = results.get("data_path")
    if d:
        parts += [
            "",
            f"## Data path ({d['images']:,} training images, {d['csv_megabytes']:.0f} MB of CSV)",
            "",
            "| task | project (`data.py`) | reference | reference ÷ project |",
            "|---|---|---|---|",
            f"| IDX -> CSV | {d['convert_seconds_project']:.2f} s | {d['convert_seconds_original']:.2f} s "
            f"(the original per-byte loop) | {d['convert_speedup']:.1f}x |",
            f"| CSV -> arrays | {d['load_seconds_project']:.2f} s | {d['load_seconds_reference']:.2f} s "
            f"(`numpy.loadtxt`) | {d['load_speedup']:.2f}x |",
            "",
            f"Both CSVs byte-identical: {'yes' if d['csv_identical'] else 'NO'}; loaded arrays identical: "
            f"{'yes' if d['loaded_arrays_identical'] else 'NO'}. Converting both splits "
            f"({d['both_splits_images']:,} images) with the project: {d['convert_both_splits_seconds']:.2f} s.",
        ]
    return "\n".join(parts) + "\n"


def chart(results: dict, path: Path) -> None:
    """Grouped bars of images/s: one panel per device and mode, groups by batch size, one bar per backend and impl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One device per bar; data-parallel rows have their own table (a bar would hide the one-device figure).
    rows = [r for r in results["rows"] if r["status"] == "ok" and r["replicas"] == 1]
    panels = sorted({(r["device"], r["mode"]) for r in rows}, key=lambda p: (p[0], p[1] != "train"))
    series = sorted({(r["backend"], r["impl"]) for r in rows})
    batch_sizes = sorted({r["batch_size"] for r in rows})
    colours = {("jax", "keras"): "#1f77b4", ("jax", "raw"): "#9ecae9",
               ("tensorflow", "keras"): "#ff7f0e", ("tensorflow", "raw"): "#ffbb78"}
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.9), squeeze=False)
    width = 0.8 / max(1, len(series))
    for ax, (device, mode) in zip(axes[0], panels):
        for i, (backend, impl) in enumerate(series):
            values = {r["batch_size"]: r for r in rows
                      if (r["device"], r["mode"], r["backend"], r["impl"]) == (device, mode, backend, impl)}
            xs = [j + (i - (len(series) - 1) / 2) * width for j, b in enumerate(batch_sizes) if b in values]
            heights = [values[b]["images_per_second"] for b in batch_sizes if b in values]
            bars = ax.bar(xs, heights, width, label=f"{backend} {impl}", color=colours.get((backend, impl)))
            for bar, b in zip(bars, [b for b in batch_sizes if b in values]):
                ax.annotate(f"{values[b]['pct_of_peak']:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
        ax.set_xticks(range(len(batch_sizes)), [str(b) for b in batch_sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(f"{mode} on {device}")
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    # One legend below the panels: inside, it would cover the bars' labels.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(series)), fontsize=9, frameon=False)
    m = results["machine"]
    fig.suptitle(f"MNIST CNN throughput, median of {results['windows']} windows (labels: % of the device's matmul "
                 f"peak) - {cpu_line(m)}, load average {results['load_average_before']:.1f} "
                 "at the start", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_all(results: dict, out: Path) -> None:
    """The bench's results: the two files every benchmark writes, and the chart."""
    write_results(out, results, markdown(results))
    chart(results, out / "results.png")


def write_results(out, results: dict, report: str) -> None:
    """``out/results.json`` (``results``) and ``out/results.md`` (``report``), each written whole or not at all."""
    write_text(Path(out) / "results.json", json.dumps(results, indent=2) + "\n")
    write_text(Path(out) / "results.md", report)


def exit_status(row: dict) -> str:
    """`` (exit status N)`` for a failed worker's row, else nothing."""
    return f" (exit status {row['exit_code']})" if row.get("exit_code") is not None else ""
