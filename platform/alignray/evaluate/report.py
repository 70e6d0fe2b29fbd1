"""The evaluation report: a markdown table and PNG plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alignray.evaluate.winrate import Gain, Rate, WinRate
from alignray.rewards import diversity as div
from alignray.stats import independent_difference, wilson_method

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
    # per policy, harmful prompts: answers that open with a refusal phrase, then comply (not refusals)
    then_complies: list[Rate] = field(default_factory=list)

    def net_gains(self) -> list[Gain]:
        """Per opponent: the refusal gain on harmful prompts minus the over-refusal change on the
        benign ones (refusing more where it is right, charged for refusing more where it is wrong):
        a difference of estimates on independent prompt sets, with its MOVER interval."""
        over = {g.opponent: g for g in self.over_refusal_gains}
        return [Gain(g.opponent, "net_refusal", *independent_difference((g.gain, g.low, g.high), (o.gain, o.low, o.high)),
                     f"MOVER of {g.method}")
                for g in self.refusal_gains if (o := over.get(g.opponent))]


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
                    ("over-refusal change (benign)", methods(h.over_refusal_gains)) if over_gain else None, changes),
            *(["", "Answers that open with a refusal phrase, then give substantive content (counted as no refusal"
               " above; `alignray.rewards.judges.refusal_kind`), on the harmful prompts: "
               + "; ".join(f"{r.policy} {r.rate:.3f} [{r.low:.3f}, {r.high:.3f}]" for r in h.then_complies)
               + f" ({methods(h.then_complies)})."] if h.then_complies else [])]


def share(value: float | None) -> str:
    """A share in a table: three decimals, or a dash when there is none (no decided pair)."""
    return "–" if value is None else f"{value:.3f}"


def markdown(title: str, policy: str, prompts: int, rates: list[WinRate], means: dict, harmless: Harmlessness,
             agreement: dict | None, diversity: DiversityReport | None = None, notes: tuple[str, ...] = ()) -> str:
    """The report; `notes` go first, under the title (which split, how the policy was chosen, warnings)."""
    method = methods(rates) or wilson_method()
    lines = [
        f"# {title}", "", *(line for note in notes for line in (note, "")),
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
    lines += _diversity_lines(diversity)
    return "\n".join(lines) + "\n"


# ---- diversity: each policy's figures and the collapse flag (alignray.rewards.diversity) ----


@dataclass(frozen=True)
class DiversityReport:
    """Each policy's diversity figures (the evaluated policy first) and collapse()'s reasons for
    the evaluated policy against the starting model; `start` is None when the starting model is
    not among the opponents (then nothing is flagged)."""

    figures: dict[str, div.Diversity]
    policy: str
    start: str | None
    reasons: list[str]

    def warning(self) -> str | None:
        """The user-facing warning when the policy looks degenerate, else None."""
        if not self.reasons:
            return None
        return (f"the answers of {self.policy} look degenerate against the starting model {self.start}'s"
                f" (reward hacking?): {'; '.join(self.reasons)}")


def diversity_report(answers: dict[str, list[str]], policy: str, start: str | None) -> DiversityReport:
    """`answers`: every policy's answers to the same prompts, by name; `start`: the starting
    model's name when it is among them."""
    figures = {name: div.diversity(texts) for name, texts in answers.items()}
    reasons = div.collapse(figures[policy], figures[start]) if start in figures and start != policy else []
    return DiversityReport(figures, policy, start if start in figures else None, reasons)


def _figure(name: str, value: float) -> str:
    return f"{value:.0f}" if name == "mean_length" else f"{value:.3f}"


def _diversity_lines(d: DiversityReport | None) -> list[str]:
    if d is None:
        return []
    lines = ["", "## Diversity", "",
             ("Over each policy's answers to every prompt: distinct words and word pairs pooled over the answers"
              " (distinct-1, distinct-2), the share of an answer's 3-grams repeating its own earlier ones, of"
              " non-letter characters (emoji, symbols, digits), of answers equal to another answer, and the mean"
              " length. The evaluated policy is flagged on changes against the starting model"
              f" (`alignray.rewards.diversity`): distinct-2 below {div.DISTINCT_2_FALL:.2f} of the start's,"
              f" repeated 3-grams +{div.REPEATED_RISE}, non-letter characters +{div.NON_ALPHA_RISE},"
              f" identical answers +{div.IDENTICAL_RISE}."), "",
             "| policy | " + " | ".join(div.FIGURE_NAMES.values()) + " | answers |",
             "|---|" + "---|" * (len(div.FIGURE_NAMES) + 1)]
    lines += [f"| {name} | " + " | ".join(_figure(k, v) for k, v in f.figures().items()) + f" | {f.answers} |"
              for name, f in d.figures.items()]
    if d.start is None:
        lines += ["", ("No collapse flags: they compare the policy with the starting model (`model.name`), which is"
                       " not among the opponents.")]
    elif d.reasons:
        lines += ["", f"**Warning: the answers of `{d.policy}` look degenerate against the starting model `{d.start}`:**",
                  "", *(f"- {r}" for r in d.reasons)]
    else:
        lines += ["", f"No collapse flag against the starting model `{d.start}`."]
    return lines


def diversity_summary(d: DiversityReport | None) -> list[str]:
    """The summary's lines: each policy's figures, then the flags."""
    if d is None:
        return []
    lines = [f"diversity of {name}: " + ", ".join(f"{div.FIGURE_NAMES[k]} {_figure(k, v)}" for k, v in f.figures().items())
             for name, f in d.figures.items()]
    if d.start is None:
        lines.append("diversity flags need the starting model (model.name) among the opponents")
    else:
        lines += [f"degenerate against {d.start}: {r}" for r in d.reasons] or [f"no collapse against {d.start}"]
    return lines


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
