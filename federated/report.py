"""Human-facing results of a federated run: the ``map.png`` plot and short text tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from federated.config import atomic_write_bytes


def plot_rounds(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Plot mAP50 and mAP50-95 per round and each client's train loss; write a PNG atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in rows]
    fig, (ax_map, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        ax_map.plot(rounds, [row.get("map50_95", 0.0) for row in rows], marker="o", label="mAP50-95")
        ax_map.plot(rounds, [row.get("map50", 0.0) for row in rows], marker="s", label="mAP50")
        ax_map.set(xlabel="round", ylabel="mAP (held-out split)", title="Global model")
        ax_map.set_ylim(bottom=0)
        ax_map.legend()
        ax_map.grid(alpha=0.3)
        by_client: dict[str, tuple[list[int], list[float]]] = {}
        for row in rows:
            for client in row.get("clients", []):
                if client.get("train_loss") is None:
                    continue
                name = f"client {client.get('partition_id', client.get('node_id'))}"
                xs, ys = by_client.setdefault(name, ([], []))
                xs.append(row["round"])
                ys.append(client["train_loss"])
        for name, (xs, ys) in sorted(by_client.items()):
            ax_loss.plot(xs, ys, marker=".", label=name)
        ax_loss.set(xlabel="round", ylabel="train loss (last local epoch)", title="Clients")
        if by_client:
            ax_loss.legend()
        ax_loss.grid(alpha=0.3)
        for axis in (ax_map, ax_loss):
            axis.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def round_line(row: dict[str, Any], total_rounds: int) -> str:
    """One progress line: ``round 2/3  mAP50-95 0.412  mAP50 0.701  12.3 s  clients 2/2``."""
    clients = row.get("clients", [])
    ok = sum(1 for c in clients if c.get("status") == "ok")
    return (
        f"round {row['round']}/{total_rounds}  mAP50-95 {row.get('map50_95', 0.0):.3f}  "
        f"mAP50 {row.get('map50', 0.0):.3f}  {row.get('round_seconds', 0.0):.1f} s  "
        f"clients {ok}/{len(clients)}"
    )


def progress_bar(done: int, total: int, width: int = 24) -> str:
    """``[########----------------] 1/3``."""
    filled = round(width * done / total) if total else width
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


def final_table(rows: Sequence[dict[str, Any]]) -> str:
    """A short table of every round: mAP figures, train loss, seconds, megabytes moved (and DP epsilon)."""
    private = any(row.get("epsilon") is not None for row in rows)
    columns = ("round", "mAP50-95", "mAP50", "loss", "seconds", "MB sent", "MB recv") + (
        ("epsilon",) if private else ()
    )
    widths = (5, 8, 6, 7, 7, 7, 7) + ((8,) if private else ())
    header = "  ".join(f"{name:>{width}}" for name, width in zip(columns, widths, strict=True))
    lines = [header, "-" * len(header)]
    for row in rows:
        loss = row.get("train_loss")
        lines.append(
            f"{row['round']:>5}  {row.get('map50_95', 0.0):>8.3f}  {row.get('map50', 0.0):>6.3f}  "
            f"{(f'{loss:.3f}' if loss is not None else '-'):>7}  {row.get('round_seconds', 0.0):>7.1f}  "
            f"{row.get('bytes_sent', 0) / 1e6:>7.1f}  {row.get('bytes_received', 0) / 1e6:>7.1f}"
            + (f"  {row.get('epsilon') or 0.0:>8.3f}" if private else "")
        )
    return "\n".join(lines)
