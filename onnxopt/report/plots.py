"""Figures for the HTML report, as inline SVG drawn by matplotlib (a core dependency).

Every function still returns None when matplotlib cannot be imported (a broken
install); the report then says so instead of failing.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

from onnxopt.evaluate.agreement import SNR_CAP_DB


@dataclass(frozen=True)
class Candidate:
    """One point of the trade-off plot."""

    label: str
    latency_ms: float
    quality: float  # accuracy, or top-1 agreement with the reference
    size_bytes: int
    latency_interval: tuple[float, float] | None = None  # 95 % interval of the median (ms); None: the baseline


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def tradeoff(candidates: Sequence[Candidate], quality_label: str) -> str | None:
    """Latency (x, from 0 so that a ratio reads as the distance it is) against accuracy or agreement (y, at least
    two points tall, so that a tenth of a point does not fill the plot); marker area proportional to file size;
    a candidate's 95 % latency interval as a horizontal whisker; each point named in a legend beside the plot
    (labels beside points collide when points coincide)."""
    if not available() or not candidates:
        return None
    fig, ax = _figure(width=8)
    biggest = max(c.size_bytes for c in candidates) or 1
    for i, c in enumerate(candidates):
        label = f"{c.label}, {c.size_bytes / 1e6:.2f} MB"
        ax.scatter(c.latency_ms, c.quality, s=40 + 400 * c.size_bytes / biggest, alpha=0.6, label=label)
        if c.latency_interval is not None:
            low, high = c.latency_interval
            whisker = ax.errorbar(
                c.latency_ms,
                c.quality,
                xerr=[[c.latency_ms - low], [high - c.latency_ms]],
                fmt="none",
                ecolor="black",
                capsize=3,
                linewidth=1,
            )
            _name(whisker, f"latency-interval-{i}")
    slowest = max(max((c.latency_ms, *(c.latency_interval or ()))) for c in candidates)
    ax.set_xlim(0, 1.1 * slowest)
    low, high = min(c.quality for c in candidates), max(c.quality for c in candidates)
    margin = max(high - low, 0.02) * 0.3
    ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel("latency p50 (ms), from 0")
    ax.set_ylabel(quality_label)
    ax.grid(alpha=0.3)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, borderaxespad=0)
    for handle in legend.legend_handles:
        handle.set_sizes([40])  # every entry the same size: the legend names, the plot sizes
    return _svg(fig)


def layer_snr(names: Sequence[str], snr_db: Sequence[float], threshold_db: float) -> str | None:
    """Per-layer SNR in topological order, with the threshold."""
    if not available() or not names:
        return None
    fig, ax = _figure(width=9)
    values = [min(v, SNR_CAP_DB) for v in snr_db]  # identical tensors (inf) drawn at the top
    ax.plot(range(len(values)), values, marker="o", markersize=3)
    ax.axhline(threshold_db, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold_db:g} dB")
    ax.set_xlabel("layer (topological order)")
    ax.set_ylabel("SNR vs reference (dB, capped at 150)")
    if len(names) <= 40:
        ax.set_xticks(range(len(names)), [n[-24:] for n in names], rotation=90, fontsize=6)
    ax.legend()
    ax.grid(alpha=0.3)
    return _svg(fig)


def wrap_path(label: str, width: int = 28) -> str:
    """``label`` (a model's name, maybe with folders) in lines of about ``width`` characters, broken after a
    ``/``, ``_`` or ``.`` where it can be: whole and readable under a bar, never cut."""
    lines, line = [], ""
    for piece in re.findall(r"[^/_.]*[/_.]?", label):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    return "\n".join([*lines, line] if line else lines)


def latency_bars(
    labels: Sequence[str],
    p50: Sequence[float],
    intervals: Sequence[tuple[float, float] | None],
    notes: Sequence[str] = (),
) -> str | None:
    """Median (p50) latency per model, bars from 0, each with its 95 % interval in ms as a whisker where it has
    one (None: no whisker, e.g. the baseline a ratio is taken against); ``notes`` printed above the bars."""
    if not available() or not labels:
        return None
    fig, ax = _figure()
    ax.bar(range(len(labels)), p50, color="#8fb3d9")
    for i, (median, interval) in enumerate(zip(p50, intervals, strict=True)):
        if interval is not None:
            low, high = interval
            whisker = ax.errorbar(
                i, median, yerr=[[median - low], [high - median]], fmt="none", ecolor="black", capsize=8, linewidth=1.5
            )
            _name(whisker, f"latency-interval-{i}")
    top = max((*p50, *(high for _, high in filter(None, intervals))))
    for i, note in enumerate(notes):
        if note:
            ax.annotate(note, (i, top), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8)
    ax.set_ylim(0, 1.15 * top)
    ax.set_xticks(range(len(labels)), [wrap_path(label) for label in labels], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("latency p50 (ms)")
    ax.grid(alpha=0.3, axis="y")
    return _svg(fig)


def pareto(
    sizes: Sequence[float],
    drops: Sequence[float],
    latencies: Sequence[float | None],
    labels: Sequence[str],
    front: Sequence[bool],
    max_drop: float,
) -> str | None:
    """A tune's trials: file size ratio (x) against the metric's drop (y), the budget as a line; finalists
    (timed) filled and labelled with their latency ratio, the Pareto front joined."""
    if not available() or not sizes:
        return None
    fig, ax = _figure()
    timed = [i for i, lat in enumerate(latencies) if lat is not None]
    others = [i for i in range(len(sizes)) if latencies[i] is None]
    ax.scatter([sizes[i] for i in others], [drops[i] for i in others], s=25, alpha=0.45, label="trials")
    ax.scatter([sizes[i] for i in timed], [drops[i] for i in timed], s=60, label="finalists (timed)")
    for n, i in enumerate(timed):
        ax.annotate(f"{labels[i]}, {latencies[i]:.2f}x latency", (sizes[i], drops[i]), xytext=(6, 6 + 12 * (n % 4)),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    on_front = sorted((sizes[i], drops[i]) for i in range(len(sizes)) if front[i])
    if len(on_front) > 1:
        ax.step(*zip(*on_front, strict=True), where="post", linewidth=1, alpha=0.6, label="Pareto front (size, drop)")
    ax.axhline(max_drop, linestyle="--", linewidth=1, color="grey", label=f"budget {max_drop:g}")
    ax.axvline(1.0, linewidth=1, color="grey", alpha=0.5)  # the original's size
    ax.set_xlim(0, 1.08 * max(1.0, *sizes))  # a ratio axis: 0 and 1 (the original) both on it
    low, high = min(0.0, *drops), max(max_drop, *drops)
    margin = 0.08 * ((high - low) or 1.0)
    ax.set_ylim(low - margin, high + margin)  # no drop (0) and the budget on it
    ax.set_xlabel("file size / original (1 = the original)")
    ax.set_ylabel("metric drop on the selection data")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def _name(container, gid: str) -> None:  # container: matplotlib ErrorbarContainer
    """Give an error bar's lines and caps an SVG id (``gid``), so a reader of the SVG (or a test) finds them."""
    for artist in container.get_children():
        artist.set_gid(gid)


def _figure(width: float = 6.5):  # -> tuple[Figure, Axes]
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, 4), layout="constrained")


def _svg(fig) -> str:  # fig: matplotlib Figure
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]
