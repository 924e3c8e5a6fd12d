"""`finetune`'s metrics record: rows of step metrics, CSV/JSON files and a loss-curve PNG.

Every file is written atomically. The PNG needs matplotlib (the `[plot]`
extra); without it the CSV and JSON are still written.
"""

import csv
import io
import json
import math

from gpt2_lib.utils.atomic import atomic_file
from gpt2_lib.utils.atomic import write_text_atomic

COLUMNS = (
    "step", "epoch", "train_loss", "val_loss", "val_perplexity",
    "learning_rate", "tokens", "elapsed_seconds",
)


def perplexity(loss):
    return math.exp(loss) if loss is not None and loss < 700 else None


class MetricsRecord:
    """Rows of `COLUMNS`; `None` where a metric was not measured at that step.

    Args:
        rows: rows recorded before (a resumed run continues them).
    """

    def __init__(self, rows=None):
        self.rows = [dict(row) for row in rows or []]

    def add(self, step, **values):
        """Set metrics of `step` (merging with a row of the same step)."""
        if self.rows and self.rows[-1]["step"] == step:
            row = self.rows[-1]
        else:
            row = {column: None for column in COLUMNS}
            row["step"] = step
            self.rows.append(row)
        for key, value in values.items():
            if key not in COLUMNS:
                raise KeyError(key)
            row[key] = value
        if row.get("val_loss") is not None:
            row["val_perplexity"] = perplexity(row["val_loss"])
        return row

    def validation(self):
        """`[(step, val_loss)]` in order."""
        return [(r["step"], r["val_loss"]) for r in self.rows if r["val_loss"] is not None]

    def train(self):
        return [(r["step"], r["train_loss"]) for r in self.rows if r["train_loss"] is not None]

    def csv_text(self):
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else _format(v)) for k, v in row.items()})
        return out.getvalue()

    def write_csv(self, path):
        write_text_atomic(path, self.csv_text())

    def write_json(self, path, summary):
        write_text_atomic(path, json.dumps({"summary": summary, "history": self.rows}, indent=2) + "\n")

    def write_plot(self, path, title):
        """The loss curves as a PNG; returns False when matplotlib is not installed."""
        try:
            import matplotlib

            matplotlib.use("Agg", force=True)
            from matplotlib import pyplot
        except ImportError:
            return False
        figure, axes = pyplot.subplots(figsize=(7, 4), dpi=110)
        train = self.train()
        if train:
            axes.plot(*zip(*train), label="train loss", color="tab:blue")
        validation = self.validation()
        if validation:
            axes.plot(*zip(*validation), "o-", label="validation loss", color="tab:orange")
        axes.set_xlabel("step")
        axes.set_ylabel("loss (nats per token)")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        with atomic_file(path, suffix=".png") as tmp:
            figure.savefig(tmp, format="png")
        pyplot.close(figure)
        return True


def _format(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
