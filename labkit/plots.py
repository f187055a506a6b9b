"""Plots shared by the notebooks and the main job; functions only draw what they are given."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def results_bars(df: pd.DataFrame, path=None):
    """Accuracy, b32 latency and size side by side for each row of a `measure.table`."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(df) + 1.8), sharey=True)
    for ax, col, label in zip(axes, ["accuracy", "latency_b32_ms", "size_mb"],
                              ["test accuracy", "batch-32 latency (ms, median)", "serialized size (MB)"]):
        ax.barh(df["name"], df[col], color="#4c72b0")
        ax.set_xlabel(label)
        for y, v in enumerate(df[col]):
            if pd.notna(v):
                ax.text(v, y, f" {v:.3f}" if col == "accuracy" else f" {v:.1f}", va="center", fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def pareto(df: pd.DataFrame, x: str = "latency_b32_ms", y: str = "accuracy", path=None):
    """Accuracy against latency (or size), one point per model, labelled."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(df[x], df[y], color="#dd8452")
    for _, row in df.iterrows():
        ax.annotate(row["name"], (row[x], row[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
