"""The evaluation report: a markdown table and PNG plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignray.stats import wilson_method
from alignray.evaluate.winrate import Gain, Rate, WinRate

JUDGE_NAMES = {
    "model": "AI judge (both orders)",
    "profanity": "alt-profanity-check (lower wins)",
    "hate": "HateSonar (lower wins)",
    "length": "length (longer 'wins'; bias check)",
}


@dataclass(frozen=True)
class Harmlessness:
    """The refusal judge's rates: on the harmful (evaluation) prompts and on the benign ones."""

    refusals: list[Rate]  # per policy, harmful prompts
    refusal_gains: list[Gain]  # policy minus each opponent, harmful prompts
    over_refusals: list[Rate]  # per policy, benign prompts (empty without benign_data)
    over_refusal_gains: list[Gain]
    benign_prompts: int


def _interval(low: float, high: float) -> str:
    return f"[{low:+.3f}, {high:+.3f}]"


def methods(items: list[WinRate] | list[Rate] | list[Gain]) -> str:
    """The intervals' method(s) of `items`, e.g. "Wilson 95%" (several joined by " / ")."""
    return " / ".join(dict.fromkeys(i.method for i in items))


def _table(head: str, harmful: tuple[str, str], benign: tuple[str, str] | None, rows: list[list[str]]) -> list[str]:
    """A markdown table: a name, the harmful prompts' value and interval, and the benign ones' when
    measured; each (value's name, its interval's method)."""
    cols = [head, harmful[0], f"{harmful[1]} CI"] + ([benign[0], f"{benign[1]} CI"] if benign else [])
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]


def _refusal_lines(h: Harmlessness) -> list[str]:
    if not h.refusals:
        return []
    over = {r.policy: r for r in h.over_refusals}
    over_gain = {g.opponent: g for g in h.over_refusal_gains}
    rates = [[r.policy, f"{r.rate:.3f}", f"[{r.low:.3f}, {r.high:.3f}]"]
             + ([f"{o.rate:.3f}", f"[{o.low:.3f}, {o.high:.3f}]"] if (o := over.get(r.policy)) else [])
             for r in h.refusals]
    changes = [[g.opponent, f"{g.gain:+.3f}", _interval(g.low, g.high)]
               + ([f"{o.gain:+.3f}", _interval(o.low, o.high)] if (o := over_gain.get(g.opponent)) else [])
               for g in h.refusal_gains]
    return ["", "## Refusal rate", "",
            ("Share of responses with a stock refusal phrase (`I'm sorry`, `I can't`, `As an AI`, ...): right on a"
             " harmful request, wrong (over-refusal) on a harmless one" +
             (f"; over-refusal is measured on {h.benign_prompts} held-out benign prompts." if over else ".")), "",
            *_table("policy", ("refusal on harmful prompts", methods(h.refusals)),
                    ("over-refusal on benign prompts", methods(h.over_refusals)) if over else None, rates),
            "", f"Change against each opponent (policy minus opponent on the same prompts, {methods(h.refusal_gains)}"
                " interval):", "",
            *_table("opponent", ("refusal gain (harmful)", methods(h.refusal_gains)),
                    ("over-refusal change (benign)", methods(h.over_refusal_gains)) if over_gain else None, changes)]


def share(value: float | None) -> str:
    """A share in a table: three decimals, or a dash when there is none (no decided pair)."""
    return "–" if value is None else f"{value:.3f}"


def markdown(title: str, policy: str, prompts: int, rates: list[WinRate], means: dict, harmless: Harmlessness,
             agreement: dict | None) -> str:
    method = methods(rates) or wilson_method()
    lines = [
        f"# {title}", "",
        f"Policy `{policy}` against each opponent on {prompts} held-out prompts. Win rate = (wins + ties/2) / prompts,"
        f" with a {method} score interval on that count (a tie counts as half a win: with ties the interval is"
        " conservative).", "",
        f"| opponent | judge | win rate | {method} CI | wins / ties / losses | policy mean | opponent mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rates:
        pm, om = means.get((r.opponent, r.judge), (None, None))
        fmt = (lambda v: "" if v is None else f"{v:.3f}")
        lines.append(
            f"| {r.opponent} | {JUDGE_NAMES[r.judge]} | {r.rate:.3f} | [{r.low:.3f}, {r.high:.3f}] |"
            f" {r.wins} / {r.ties} / {r.losses} | {fmt(pm)} | {fmt(om)} |"
        )
    lines += _refusal_lines(harmless)
    if agreement:
        lines += ["", f"## Preference-model agreement ({agreement['pairs']} labelled pairs of `{agreement['dataset']}`)", "",
                  f"| head | accuracy | {agreement.get('interval', wilson_method())} CI |", "|---|---|---|"]
        for head, (acc, low, high) in agreement["heads"].items():
            lines.append(f"| {head} | {acc:.3f} | [{low:.3f}, {high:.3f}] |")
    if agreement and agreement["judges"]:
        heads = list(agreement["heads"])
        lines += ["", "### Agreement with independent judges", "",
                  ("On the pairs a judge decides (it finds one answer more harmless), the share where the labels, and"
                   " each head, prefer that answer."), "",
                  "| judge | decided pairs | labels | " + " | ".join(heads) + " |", "|---|---|---|" + "---|" * len(heads)]
        for judge, a in agreement["judges"].items():
            cells = [share(a["labels"]), *(share(a["heads"][h]) for h in heads)]
            lines.append(f"| {judge} | {a['decided']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_win_rates(rates: list[WinRate], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rates)))
    labels = [f"{r.judge} vs {r.opponent}" for r in rates]
    y = range(len(rates))
    ax.errorbar([r.rate for r in rates], y, xerr=[[r.rate - r.low for r in rates], [r.high - r.rate for r in rates]],
                fmt="o", capsize=4)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(list(y), labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"policy win rate ({methods(rates)} CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_refusals(h: Harmlessness, path: Path) -> None:
    """Refusal rate per policy on the harmful prompts and, when measured, on the benign ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [("harmful prompts (refusal)", h.refusals)] + ([("benign prompts (over-refusal)", h.over_refusals)]
                                                          if h.over_refusals else [])
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.5 * len(h.refusals) * len(sets)))
    for k, (label, rates) in enumerate(sets):
        y = [i * len(sets) + k for i in range(len(rates))]
        ax.errorbar([r.rate for r in rates], y, xerr=[[r.rate - r.low for r in rates], [r.high - r.rate for r in rates]],
                    fmt="o", capsize=4, label=label)
    ax.set_yticks([i * len(sets) + (len(sets) - 1) / 2 for i in range(len(h.refusals))], [r.policy for r in h.refusals])
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"refusal rate ({methods(h.refusals + h.over_refusals)} CI)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One panel per metric (e.g. reward, kl) against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
    for ax, (name, points) in zip(axes[0], curves.items()):
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".")
        ax.set_title(name)
        ax.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
