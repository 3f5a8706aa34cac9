"""The adherence chart: quantity and quality per week, as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display

import matplotlib.pyplot as plt

from dialogs.digest import ClientDigest
from dialogs.timeparse import utc_to_local
from prompts import Prompts


def adherence_png(digest: ClientDigest, prompts: Prompts) -> bytes:
    """Two series over the digest's trend weeks: mean amount done (0–4) and quality (share of rubric criteria met).

    Weeks without debriefs are gaps, not zeros: "no data" must not read as
    "did nothing". Labels come from prompts; the figure is closed after
    rendering, so repeated calls do not accumulate memory.
    """
    t = prompts.text
    labels = []
    for point in digest.trend:
        local = utc_to_local(point.start, digest.timezone)
        labels.append(local.strftime("%d %b") if local else "")
    amounts = [p.quantity if p.quantity is not None else float("nan") for p in digest.trend]
    quality = [p.quality * 4 if p.quality is not None else float("nan") for p in digest.trend]
    counts = [p.debriefs for p in digest.trend]

    figure, axis = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    try:
        positions = list(range(len(labels)))
        axis.plot(positions, amounts, marker="o", linewidth=2, label=t("digest.chart.amount"))
        axis.plot(positions, quality, marker="s", linewidth=2, linestyle="--", label=t("digest.chart.quality"))
        for x, count in zip(positions, counts, strict=True):
            axis.annotate(t("digest.chart.count", count=count), (x, 0.1), ha="center", fontsize=8, color="#555555")
        axis.set_xticks(positions, labels)
        axis.set_ylim(0, 4.2)
        axis.set_yticks([0, 1, 2, 3, 4])
        axis.set_ylabel(t("digest.chart.y_axis"))
        axis.set_title(t("digest.chart.title", client=digest.client))
        axis.grid(axis="y", alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)
