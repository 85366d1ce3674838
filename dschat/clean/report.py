"""The cleaning report: per-rule counts with examples, timings, lengths; as a table, JSON, markdown and a PNG."""

from __future__ import annotations

import json
import os
from array import array
from dataclasses import asdict, dataclass, field

import numpy as np

from dschat.clean.text import preview

SPLITS = ("train", "eval")
MAX_EXAMPLES = 3
# Every rule in the order records meet it, with what the report says it does.
RULES = {
    "repair": "mojibake / broken unicode fixed (ftfy), NFC, line ends, invisible characters (records changed, kept)",
    "pii": "emails, IP addresses, phone numbers replaced by placeholders (records changed, kept)",
    "skipped": "records the data loader already skips (empty prompt or answer)",
    "malformed": "empty prompt, answer or turn, no assistant turn, roles out of order",
    "short_answer": "an assistant answer under --min_answer_chars characters",
    "language": "not one of --languages (py3langid)",
    "truncated": "longer than --max_seq_len tokens (--truncated drop)",
    "no_loss_tokens": "no loss-bearing token left after truncation at --max_seq_len",
    "contaminated": "train record sharing an n-gram, a whole prompt or the whole conversation with the eval split or a benchmark file",
    "exact_dup": "same normalised conversation (NFKC, case-folded, whitespace collapsed) as an earlier record",
    "near_dup": "near-duplicate (MinHash LSH, estimated Jaccard >= --near_dup_threshold) of a kept record",
}
CHANGE_RULES = ("repair", "pii")
HISTOGRAM_FILE = "length_histogram.png"


@dataclass
class Example:
    """One record a rule removed or changed, and why."""

    split: str
    where: str
    why: str
    text: str
    after: str | None = None


@dataclass
class RuleStats:
    """What one rule did to each split, and the time it took (seconds summed over workers)."""

    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    changed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    checked: int = 0
    seconds: float = 0.0
    examples: list[Example] = field(default_factory=list)
    note: str = ""


@dataclass
class CleanReport:
    """Counts per rule and split, examples, lengths (characters per conversation) before and after."""

    inputs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    kept: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    rules: dict[str, RuleStats] = field(default_factory=lambda: {name: RuleStats() for name in RULES})
    settings: dict = field(default_factory=dict)
    lengths_before: array = field(default_factory=lambda: array("q"))
    lengths_after: array = field(default_factory=lambda: array("q"))

    def drop(self, rule: str, split: str, where: str, why: str, text: str) -> None:
        stats = self.rules[rule]
        stats.removed[split] += 1
        if len(stats.examples) < MAX_EXAMPLES:
            stats.examples.append(Example(split, where, why, preview(text)))

    def change(self, rule: str, split: str, where: str, before: str, after: str) -> None:
        stats = self.rules[rule]
        stats.changed[split] += 1
        if len(stats.examples) < MAX_EXAMPLES:
            stats.examples.append(
                Example(split, where, "changed", _around_change(before, after), _around_change(after, before))
            )

    def time(self, rule: str, seconds: float, checked: int) -> None:
        self.rules[rule].seconds += seconds
        self.rules[rule].checked += checked

    @property
    def total_input(self) -> int:
        return sum(self.inputs.values())

    def removed(self, rule: str) -> int:
        return sum(self.rules[rule].removed.values())

    def to_dict(self) -> dict:
        """The JSON report (lengths as percentiles and histogram counts)."""
        rules = {name: asdict(stats) for name, stats in self.rules.items()}
        for name in self.rules:
            rules[name]["description"] = RULES[name]
            rules[name]["removed_percent"] = round(100 * self.removed(name) / max(self.total_input, 1), 3)
        before, after = _joined(self.lengths_before), _joined(self.lengths_after)
        return {
            "inputs": self.inputs,
            "kept": self.kept,
            "rules": rules,
            "length_chars": {"before": _percentiles(before), "after": _percentiles(after)},
            "settings": self.settings,
        }

    def table(self) -> str:
        """The plain-text table the CLI prints: rule, removed, % of input (and records changed)."""
        rows = [("rule", "removed", "% of input", "changed")]
        for name in RULES:
            changed = sum(self.rules[name].changed.values())
            rows.append(
                (
                    name,
                    str(self.removed(name)),
                    f"{100 * self.removed(name) / max(self.total_input, 1):.2f}",
                    str(changed) if name in CHANGE_RULES else "-",
                )
            )
        kept = sum(self.kept.values())
        rows.append(("kept", str(kept), f"{100 * kept / max(self.total_input, 1):.2f}", "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
            )
            for row in rows
        ]
        counts = ", ".join(f"{split} {self.inputs[split]} -> {self.kept[split]}" for split in SPLITS)
        return "\n".join([f"records: {counts}", *lines])

    def markdown(self) -> str:
        """The markdown report: the table, what each rule removed with up to three examples, the histogram."""
        out = [
            "# Cleaning report",
            "",
            "```",
            self.table(),
            "```",
            "",
            f"![length histogram]({HISTOGRAM_FILE})",
            "",
        ]
        for name, stats in self.rules.items():
            total = self.removed(name) + sum(stats.changed.values())
            out.append(
                f"## {name}: {self.removed(name)} removed"
                + (f", {sum(stats.changed.values())} changed" if name in CHANGE_RULES else "")
            )
            out += ["", RULES[name] + (f". {stats.note}" if stats.note else "."), ""]
            if total == 0:
                continue
            for ex in stats.examples:
                if ex.after is None:
                    out.append(
                        f"- {ex.split} `{ex.where}`: {ex.why}" + (f"\n  > {ex.text}" if ex.text else "")
                    )
                else:
                    out.append(f"- {ex.split} `{ex.where}`:\n  > before: {ex.text}\n  > after:  {ex.after}")
            out.append("")
        return "\n".join(out)

    def write(self, directory: str) -> list[str]:
        """Write clean_report.json, clean_report.md and the length histogram, each atomically."""
        paths = [
            os.path.join(directory, name) for name in ("clean_report.json", "clean_report.md", HISTOGRAM_FILE)
        ]
        write_atomic(paths[0], json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        write_atomic(paths[1], self.markdown())
        save_histogram(paths[2], _joined(self.lengths_before), _joined(self.lengths_after))
        return paths


def _joined(lengths: array) -> np.ndarray:
    return np.frombuffer(lengths, dtype=np.int64) if len(lengths) else np.zeros(0, np.int64)


def _percentiles(lengths: np.ndarray) -> dict[str, int]:
    if not len(lengths):
        return {}
    return {f"p{p}": int(np.percentile(lengths, p)) for p in (0, 50, 90, 99, 100)}


def _around_change(text: str, other: str, context: int = 60) -> str:
    """The part of ``text`` around its first difference from ``other`` (so a repair example shows the fix)."""
    start = next((i for i, (a, b) in enumerate(zip(text, other)) if a != b), min(len(text), len(other)))
    begin = max(0, start - context)
    return ("..." if begin else "") + preview(text[begin:], 2 * context + 20)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename it into place."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def save_histogram(path: str, before: np.ndarray, after: np.ndarray) -> None:
    """Overlaid before/after histograms of conversation length in characters (matplotlib, Agg), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(int(np.percentile(before, 99.5)) if len(before) else 1, 1)
    bins = np.linspace(0, top, 50)
    ax.hist(np.minimum(before, top), bins=bins, alpha=0.5, label=f"before ({len(before)} records)")
    ax.hist(
        np.minimum(after, top), bins=bins, histtype="step", linewidth=2, label=f"after ({len(after)} records)"
    )
    ax.set_xlabel("conversation length (characters; the top 0.5% in the last bin)")
    ax.set_ylabel("records")
    ax.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
