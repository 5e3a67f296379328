"""What a comparison of groups found, in words: the console's closing block and the HTML report.

Both lead with the answer: what was compared (groups and their sizes, the runs, the
model, the data, what the tests are against), which layers and kinds differ, in which
epochs, in which direction and how strongly, and which do not; whether the groups pull
the weights the same way (the gradient geometry: `geometry_answer`); then the loss and
the accuracy per group. The report follows with the figures (each with a caption that says
what is drawn), the findings table (a row per summary, grouped by layer and kind,
strongest first, epochs merged into ranges) and the runs (a row per run, a column per
option that varies).
"""

import base64
import collections
import dataclasses
import html
import json
import os
import warnings

import numpy as np

from tf_autospec import stats, wording

TOP_FINDINGS = 20
TOP_SENTENCES = 4  # differences written out in the summary, per family
TOP_GEOMETRY_SENTENCES = 2  # geometry findings written out in the summary: it stays on the first screen
TOP_LINES = 5  # differences listed in the console's closing block

ReportFigure = collections.namedtuple("ReportFigure", "title png")
ReportFigure.__doc__ = "A figure of the report: its title and its PNG image (bytes)."
ReportSection = collections.namedtuple("ReportSection", "title caption figures")
ReportSection.__doc__ = "Figures under one title and one caption (a list of `ReportFigure`)."
PIXELS_PER_INCH = 100  # figures are drawn at 150 dpi and shown at this size: sharp on dense screens
FIGURE_DPI = 150


def _metadata(runs, key):
    """The value of a metadata key in every run that has it."""
    return [run.metadata[key] for run in runs if key in run.metadata]


def _count(k, noun):
    return f"{k} {noun}{'s' if k != 1 else ''}"


def _runs_text(runs):
    """``"10 runs (5 folds × 2 seeds)"``."""
    folds, seeds = set(_metadata(runs, "fold")), set(_metadata(runs, "seed"))
    text = _count(len(runs), "run")
    return text + (f" ({_count(len(folds), 'fold')} × {_count(len(seeds), 'seed')})" if folds and seeds else "")


def _replicates(runs):
    """What the folds and the seeds replicate, as clauses."""
    folds, seeds = set(_metadata(runs, "fold")), set(_metadata(runs, "seed"))
    return ((["folds train on different subsets of the subjects"] if len(folds) > 1 else [])
            + (["seeds re-train on the same subjects (they make each estimate less noisy, they add no subjects)"]
               if len(seeds) > 1 else []))


def design(runs):
    """The design in words: runs, folds × seeds, and what the seeds and folds replicate."""
    return "; ".join([_runs_text(runs)] + _replicates(runs))


def _sizes(runs):
    """``(sizes, totals, unit)``: each group's subjects as the experiment recorded them (the
    first run's training set, and ``totals`` in all, or None when they are the same), or
    the mean samples per recorded step when the runs do not say."""
    recorded, total = _metadata(runs, "group_sizes"), _metadata(runs, "group_sizes_all")
    if recorded:
        sizes = {group: recorded[0].get(group) for group in runs[0].groups}
        if total and total[0] != recorded[0]:
            return sizes, {group: total[0].get(group) for group in runs[0].groups}, "subjects per training set"
        return sizes, None, "subjects"
    mean = {group: float(np.mean([np.mean(run.counts(group)) for run in runs])) for group in runs[0].groups}
    return mean, None, "samples per step on average"


def group_sizes(runs):
    """``({group: size}, unit)``: subjects as the experiment recorded them (the training
    subjects of the first run, and in all), or the mean samples per recorded step when
    the runs do not say."""
    sizes, totals, unit = _sizes(runs)
    if totals:
        unit += f" ({', '.join(f'{g} {n}' for g, n in totals.items())} in all)"
    return sizes, unit


def imbalance(sizes):
    """The largest group's size over the smallest's (1 = balanced)."""
    values = [v for v in sizes.values() if v]
    return max(values) / min(values) if values else np.nan


def target_statement(runs):
    """What the model predicts, and what that means for the comparison."""
    if stats.target_follows_groups(runs):
        return ("The groups are the prediction target: the loss pulls each class towards its own label, so "
                "their gradients differ by construction, most of all near the output. A difference then says "
                "how the model learns the classes, not that the groups differ otherwise; random groups of the "
                "same sizes mix the classes and are no reference for it, so no finding is claimed.")
    targets = _metadata(runs, "target")
    if targets:
        return f"The model predicts {targets[0]}, not the groups."
    return "The runs do not say what the model predicts (metadata 'target')."


GEOMETRY = "geometry"  # the family of `stats.across_runs_geometry` and `stats.within_run_geometry` rows
SPECTRA_FAMILIES = ("training", "input data")


def spectra_rows(rows):
    """The tests of the spectra (families `SPECTRA_FAMILIES`) of a table that may also
    hold the gradient geometry's."""
    return [r for r in rows if r["family"] != GEOMETRY]


def geometry_rows(rows):
    """The tests of the gradient geometry (family ``"geometry"``) of a table."""
    return [r for r in rows if r["family"] == GEOMETRY]


def _reference(rows):
    """What the spectra's tests are against: ``"null"``, ``"runs"`` or ``"steps"`` (the
    geometry is always tested against the null partitions)."""
    spectra = spectra_rows(rows)
    return spectra[0]["test"].rsplit("_", 1)[-1] if spectra else "null"


def inference_statement(rows):
    """What the tests compare the groups against, and what a finding can say."""
    if rows and rows[0]["inference"].startswith("none"):
        withheld = sum(bool(np.isfinite(r["q_value"]) and r["q_value"] <= 0.05) for r in rows)
        return (f"No finding is claimed: the groups are the prediction target ({withheld} tests would pass "
                "q ≤ 0.05 against random groups, which mix the classes; tests.csv has them).")
    if _reference(rows) == "null":
        return ("Each difference is tested against the same difference between random groups of the same sizes "
                "drawn from the same subjects (the runs' null partitions): group size alone cannot make a "
                "finding, and the subjects, not the seeds, are the replicates.")
    return ("These tests treat the runs (or steps) as independent replicates and assume groups of equal size: "
            "they say something about these runs of these subjects only. Record null partitions "
            "(null_partitions=20) for tests of the groups themselves.")


def validation_by_group(runs):
    """``(metric, split, {group: median over runs})`` from the runs' ``evaluation``
    attribute (written by `autospec run`), or ``None``."""
    recorded = [run.attributes["evaluation"] for run in runs if run.attributes.get("evaluation")]
    if not recorded:
        return None
    groups = recorded[0]["by_group"]
    medians = {g: float(np.nanmedian([r["by_group"].get(g, np.nan) for r in recorded])) for g in groups}
    return recorded[0]["metric"], recorded[0]["split"], medians


def records_group_loss(runs):
    """Whether every run records its groups' training loss (``run.group_loss``) and some
    of it is a number (files written before it was recorded, and simulated runs, have none)."""
    return all(getattr(run, "has_group_loss", False) and any(np.isfinite(run.group_loss(g)).any()
                                                             for g in run.groups) for run in runs)


def last_epoch_loss_by_group(runs):
    """``(epoch, {group: median over runs})``: each group's training loss in the last
    epoch all runs recorded, where the runs record loss per group (`records_group_loss`);
    else ``None``."""
    if not records_group_loss(runs):
        return None
    last = min(int(np.max(run.records["epoch"])) for run in runs)
    values = {}
    for group in runs[0].groups:
        per_run = []
        for run in runs:
            epochs, loss = run.epoch_group_loss(group)
            per_run.append(loss[list(epochs).index(last)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a group absent from every step
            values[group] = float(np.nanmedian(per_run))
    return last, values


def _family_level(rows, alpha=0.05):
    """The FDR level of each family: ``alpha`` shared by the families present."""
    return alpha / max(len({row["family"] for row in rows}), 1)


def _level_text(rows):
    """The FDR level of each family as people read it: ``"0.025"``, ``"0.0167"``."""
    return f"{_family_level(rows):.3g}"


def _position(row):
    """The epoch of an `across_runs` row, the first step of a `within_run` row."""
    return row["epoch"] if "epoch" in row else row["first_step"]


def _within_run(rows):
    return bool(rows) and "epoch" not in rows[0]


def _span(rows, positions):
    """Epochs as ranges (``"0–3, 7"``), or the window of steps of `within_run` rows."""
    if _within_run(rows):
        return f"{rows[0]['first_step']}–{rows[0]['last_step']}"
    return wording.span(positions)


def _when(rows, positions):
    """``"epochs 0–3, 7"``, ``"epoch 4"``, or for `within_run` rows ``"steps 10–29"``."""
    unit = "steps" if _within_run(rows) else "epochs" if len(set(positions)) > 1 else "epoch"
    return f"{unit} {_span(rows, positions)}"


@dataclasses.dataclass
class Direction:
    """The significant tests of one layer and kind in which one group is the higher.

    Attributes:
        higher, lower: the groups.
        summaries: the summaries that differ this way, strongest first.
        positions: their epochs (or first steps, within one run).
        strength: the largest ``|effect|``.
    """

    higher: str
    lower: str
    summaries: list
    positions: list
    strength: float


@dataclasses.dataclass
class Difference:
    """One layer and kind in which two groups differ: every significant test of it.

    Attributes:
        family: ``"training"`` or ``"input data"``.
        group_a, group_b: the pair, in the tests' order (``effect`` > 0: ``group_a`` higher).
        layer, kind: what differs.
        rows: its significant test rows, strongest first.
        directions: `Direction` s, strongest first (two when the sign changes between
            summaries or epochs).
    """

    family: str
    group_a: str
    group_b: str
    layer: str
    kind: str
    rows: list
    directions: list

    @property
    def strength(self):
        return abs(self.rows[0]["effect"])


def differences(rows):
    """The layers and kinds in which groups' spectra differ (`Difference`), strongest
    first (the geometry's rows, if any, are left out: `geometry_findings`)."""
    merged = {}
    for row in spectra_rows(rows):
        if row["significant"]:
            key = (row["family"], row["group_a"], row["group_b"], row["layer"], row["kind"])
            merged.setdefault(key, []).append(row)
    found = []
    for (family, a, b, layer, kind), members in merged.items():
        members.sort(key=lambda r: -abs(r["effect"]))
        directions = []
        for sign, (higher, lower) in ((1, (a, b)), (-1, (b, a))):
            same = [r for r in members if np.sign(r["effect"]) == sign]
            if same:
                directions.append(Direction(higher, lower, list(dict.fromkeys(r["summary"] for r in same)),
                                            [_position(r) for r in same], abs(same[0]["effect"])))
        directions.sort(key=lambda d: -d.strength)
        found.append(Difference(family, a, b, layer, kind, members, directions))
    return sorted(found, key=lambda d: -d.strength)


def not_different(rows, family):
    """``{kind: [layers]}`` of a family tested (some p-value) without a significant test."""
    tested, found = {}, set()
    for row in rows:
        if row["family"] == family and np.isfinite(row["p_value"]):
            tested.setdefault(row["kind"], []).append(row["layer"])
            if row["significant"]:
                found.add((row["layer"], row["kind"]))
    return {kind: [layer for layer in dict.fromkeys(layers) if (layer, kind) not in found]
            for kind, layers in tested.items()}


def _symbol(rows):
    return "|z|" if _reference(rows) == "null" else "|g|"


def _direction_text(direction, rows, several_pairs):
    listed = _and(wording.summary_name(s) for s in direction.summaries)
    than = f" than in {direction.lower}" if several_pairs else ""
    return (f"{listed} higher in {direction.higher}{than}, {_when(rows, direction.positions)} "
            f"({_symbol(rows)} up to {direction.strength:.1f})")


def difference_text(difference, rows, several_pairs=False):
    """One difference in a sentence: ``"dense/kernel, input (act): spectral norm higher
    in SZ, epochs 0–19 (|z| up to 6.1)"``."""
    parts = "; ".join(_direction_text(d, rows, several_pairs) for d in difference.directions)
    return f"{difference.layer}, {wording.kind_name(difference.kind)}: {parts}"


def _and(items):
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _unchanged_text(rows, family):
    """``"the weight gradient (grad) of dense/kernel; the input (act) of every layer"``, or ``""``."""
    every = {row["layer"] for row in rows if row["family"] == family}
    parts = []
    for kind, layers in not_different(rows, family).items():
        if layers:
            which = "every layer" if set(layers) == every and len(every) > 1 else _and(layers)
            parts.append(f"the {wording.KIND_NAMES.get(kind, kind)} ({kind}) of {which}")
    return "; ".join(parts)


def pairs_text(pairs):
    """``"A vs B, A vs C"``."""
    return ", ".join(f"{a} vs {b}" for a, b in pairs)


def compared_text(runs, pairs):
    """What was compared, in one sentence: the groups and their sizes, the runs, the model,
    the data and the target."""
    sizes, totals, unit = _sizes(runs)
    groups = [f"{g} ({_number(n)}{f' {unit}' if i == 0 else ''}{f', {totals[g]} in all' if totals else ''})"
              for i, (g, n) in enumerate(sizes.items())]
    model, dataset = _metadata(runs, "model"), _metadata(runs, "dataset")
    trained = f" of the {model[0]} model on {dataset[0]}" if model and dataset else ""
    targets = _metadata(runs, "target")
    predicting = f", predicting {targets[0]}" if targets else ""
    which = f" ({pairs_text(pairs)})" if len(pairs) > 1 else ""
    return f"Compared {_and(groups)}{which} in {_runs_text(runs)}{trained}{predicting}."


def reading_note(rows, runs):
    """How to read the summary: what the tests are against, what the folds and seeds
    replicate, how things are numbered."""
    replicates = " ".join(f"{clause[0].upper()}{clause[1:]}." for clause in _replicates(runs))
    return (f"{inference_statement(rows)} {replicates} Epochs, folds and seeds are numbered from 0, as in the file "
            "names and tests.csv.").replace("  ", " ")


def family_answer(rows, family, pairs):
    """``(headline, [sentences], unchanged)`` of one family, or ``None`` when it was not tested."""
    members = [r for r in rows if r["family"] == family]
    if not members:
        return None
    found = differences(members)
    combinations = {(r["layer"], r["kind"]) for r in members if np.isfinite(r["p_value"])}
    counts = (f"{sum(r['significant'] for r in members)} of {len(members)} tests significant at FDR "
              f"{_level_text(rows)}")
    what = "How the model trains" if family == stats.FAMILIES[0] else "The input data (the first layers' input)"
    if not found:
        headline = f"{what}: no difference between {_and(sorted({g for p in pairs for g in p}))} beyond what " \
                   f"random groups of the same sizes show ({counts})."
        return headline, [], ""
    headline = (f"{what} differs in {len({(d.layer, d.kind) for d in found})} of "
                f"{_count(len(combinations), 'layer × kind combination')} ({counts}):")
    several = len(pairs) > 1
    sentences = [difference_text(d, members, several) for d in found[:TOP_SENTENCES]]
    if len(found) > TOP_SENTENCES:
        sentences.append(f"and {len(found) - TOP_SENTENCES} more in the findings table.")
    return headline, sentences, _unchanged_text(members, family)


# In the order findings are told: do the groups pull the same way, through the same
# input directions, and whom does the step follow?
GEOMETRY_MEASURE_NAMES = {
    "cosine": "cosine of the two groups' gradients",
    "overlap": "overlap of their top input directions",
    "batch_cosine": "cosine with the batch's gradient, {a}'s minus {b}'s",
}


@dataclasses.dataclass
class GeometryFinding:
    """The significant geometry tests of one pair, layer, measure and statistic that go
    one way (`stats.across_runs_geometry`, `stats.within_run_geometry`).

    Attributes:
        group_a, group_b: the pair, in the tests' order.
        layer, measure, statistic: what was tested (``"level"`` per epoch or window,
            ``"change"`` between two epochs).
        lower: whether the value is below what random groups of the same sizes give.
        rows: the significant rows, strongest first.
    """

    group_a: str
    group_b: str
    layer: str
    measure: str
    statistic: str
    lower: bool
    rows: list

    @property
    def strength(self):
        return abs(self.rows[0]["effect"])

    @property
    def value(self):
        """The mean tested value over the rows (the runs' mean, per epoch)."""
        return float(np.mean([r["value"] for r in self.rows]))

    @property
    def chance(self):
        """What random groups of the same sizes give, over the same rows."""
        return float(np.mean([r["null_mean"] for r in self.rows]))


def geometry_findings(rows):
    """The significant gradient geometry tests of a table, as `GeometryFinding` s: the
    levels (the cosine's, the overlap's, the batch cosine's, each strongest first), then
    the changes between epochs."""
    merged = {}
    for row in geometry_rows(rows):
        if row["significant"]:
            key = (row["group_a"], row["group_b"], row["layer"], row["measure"], row["statistic"],
                   bool(row["effect"] < 0))
            merged.setdefault(key, []).append(row)
    found = [GeometryFinding(*key, sorted(members, key=lambda r: -abs(r["effect"])))
             for key, members in merged.items()]
    # Where and when first (levels), then how the values changed between epochs.
    order = list(GEOMETRY_MEASURE_NAMES)
    return sorted(found, key=lambda f: (f.statistic == "change", order.index(f.measure), -f.strength))


def _geometry_when(finding):
    row = finding.rows[0]
    if "epoch" not in row:
        return f"steps {row['first_step']}–{row['last_step']}"
    return _when(finding.rows, [r["epoch"] for r in finding.rows])


def _signed(value, digits=2):
    """``"+0.05"``, ``"−0.12"`` (a minus sign, not a hyphen)."""
    return f"{value:+.{digits}f}".replace("-", "−")


def geometry_text(finding, several=False):
    """One geometry finding in a sentence: ``"In dense/kernel, HC's and SZ's gradients
    point in opposed directions, more than random groups of the same sizes, epochs 3–9
    (cosine −0.12 vs +0.05 by chance; |z| up to 4.1)"``."""
    a, b, value, chance = finding.group_a, finding.group_b, finding.value, finding.chance
    strength = f"|z| up to {finding.strength:.1f}" if len(finding.rows) > 1 else f"|z| = {finding.strength:.1f}"
    if finding.statistic == "change":
        row = finding.rows[0]
        span = (f"from epoch {row['from_epoch']} to {row['epoch']}" if "epoch" in row
                else f"from epoch {row['first_epoch']} to {row['last_epoch']}")
        name = {"cosine": f"the cosine of {a}'s and {b}'s gradients",
                "overlap": f"the overlap of {a}'s and {b}'s top input directions",
                "batch_cosine": f"{a}'s cosine with the batch's gradient minus {b}'s"}[finding.measure]
        return (f"In {finding.layer}, {name} changes by {_signed(value)} {span}, against {_signed(chance)} for random "
                f"groups of the same sizes ({strength})")
    when = _geometry_when(finding)
    if finding.measure == "cosine":
        if finding.lower and value < 0:
            what = f"{a}'s and {b}'s gradients point in opposed directions, more than random groups of the same sizes"
        else:
            what = (f"{a}'s and {b}'s gradients are {'less' if finding.lower else 'more'} aligned than random groups "
                    "of the same sizes")
        numbers = f"cosine {_signed(value)} vs {_signed(chance)} by chance"
    elif finding.measure == "overlap":
        what = (f"{a}'s and {b}'s gradients share {'fewer' if finding.lower else 'more'} of their top input "
                "directions than random groups of the same sizes")
        numbers = f"overlap {value:.2f} vs {chance:.2f} by chance"
    else:
        followed, other, sign = (b, a, -1) if finding.lower else (a, b, 1)
        what = (f"the training step leans towards {followed}'s gradient, relative to {other}'s, more than with random "
                "groups of these sizes")
        numbers = (f"{followed}'s cosine with the batch's gradient minus {other}'s: {_signed(sign * value)} vs "
                   f"{_signed(sign * chance)} by chance")
    pair = f" ({a} vs {b})" if several and finding.measure == "batch_cosine" else ""
    return f"In {finding.layer}{pair}, {what}, {when} ({numbers}; {strength})"


def _same_direction_text(rows, pairs):
    """``"No difference in direction: ..."`` when the cosines were tested and none
    differs from random groups', else ``""``."""
    cosines = [r for r in geometry_rows(rows) if r["measure"] == "cosine"]
    if not cosines or any(r["significant"] for r in cosines):
        return ""
    groups = _and(f"{g}'s" for g in sorted({g for p in pairs for g in p}))
    return (f"No difference in direction: {groups} gradients are as aligned as those of random groups of the same "
            "sizes in every layer tested")


def _nothing_in_geometry(rows):
    """What "nothing found" means for the measures the table tested: the direction only
    when the cosines were tested."""
    tested = {r["measure"] for r in geometry_rows(rows)}
    if "cosine" in tested:
        return "no difference in direction"
    return "no difference in " + _and(sorted(wording.GEOMETRY_MEASURE_NAMES.get(m, m) for m in tested))


def geometry_answer(rows, pairs):
    """``(headline, [sentences])``: whether the groups pull the weights the same way, from
    the geometry's tests of a table, or ``None`` when it holds none.

    The headline says "no difference in direction" when nothing differs from random
    groups of the same sizes; otherwise the sentences tell the findings (`geometry_text`),
    led by "No difference in direction" when only the overlap or the batch cosine differ.
    """
    members = geometry_rows(rows)
    if not members:
        return None
    counts = (f"{sum(r['significant'] for r in members)} of {len(members)} tests significant at FDR "
              f"{_level_text(rows)}")
    groups = _and(sorted({g for p in pairs for g in p}))
    found = geometry_findings(members)
    if not found:
        return (f"Gradient geometry: {_nothing_in_geometry(members)} between {groups} beyond what random groups of "
                f"the same sizes show ({counts})."), []
    headline = f"Gradient geometry, do the groups pull the weights the same way? ({counts}):"
    sentences = [text for text in [_same_direction_text(members, pairs)] if text]
    sentences += [geometry_text(f, len(pairs) > 1) for f in found[:TOP_GEOMETRY_SENTENCES]]
    if len(found) > TOP_GEOMETRY_SENTENCES:
        sentences.append(f"and {len(found) - TOP_GEOMETRY_SENTENCES} more in the findings table.")
    return headline, sentences


def geometry_caption(runs, rows=None):
    """The caption of `plot.geometry` (drawn with test ``rows`` or without): what each
    panel, line and dot is, in words."""
    several = len(runs[0].pairs) > 1
    pair = "two groups'" if several else f"{runs[0].pairs[0][0]}'s and {runs[0].pairs[0][1]}'s" if runs[0].pairs else ""
    parts = ["Each row is a layer."]
    if "cosine" in runs[0].geometry and runs[0].pairs:
        parts.append(f"Left: the cosine between {pair} gradients of the layer's weights: +1 they push the weights the "
                     "same way, 0 in unrelated directions, −1 opposite ways (a gradient conflict: the layer learns a "
                     "compromise that may fit one group worse).")
    if "cosine" in runs[0].geometry:
        parts.append("Middle: each group's cosine with the whole batch's gradient, how much the training step "
                     "follows that group; a larger group weighs more in the batch, so compare each line with the "
                     "dotted one of random groups of its size.")
    if "overlap" in runs[0].geometry and runs[0].pairs:
        parts.append("Right: the overlap of the k input directions each group's gradient uses most (its top left "
                     "singular vectors): 1 the same directions, 0 orthogonal; dash-dotted: unrelated directions "
                     "(k / fan_in); undefined where a group's gradient has fewer than k clear directions.")
    partitions = min(run.null_partitions for run in runs)
    statistic = (f"Lines: the median over the {len(runs)} runs of each run's mean over the epoch's steps; bands: "
                 "their interquartile range." if len(runs) > 1 else "One run; each epoch the mean over its steps.")
    chance = (f" Dotted (and grey): random groups of the same sizes from the same subjects ({partitions} null "
              "partitions), the reference of the tests: a difference from them is what the groups add beyond their "
              "sizes." if partitions else " These runs hold no random groups (null partitions): no chance reference.")
    dots = (f" Dots: epochs where the test against them is significant (FDR {_level_text(rows)}); in the middle, "
            "on both groups' lines where the difference between them is."
            if rows and geometry_rows(rows) and "epoch" in geometry_rows(rows)[0] else "")
    return " ".join(parts) + f" {statistic}{chance}{dots} Epochs from 0."


def _geometry_table(members, several_pairs):
    """The significant geometry tests: a line per `GeometryFinding`, the first `TOP_FINDINGS`.

    Returns:
        ``(HTML, lines shown, lines in all)``.
    """
    found = geometry_findings(members)
    header = (["groups"] if several_pairs else []) + [
        "layer", "measure", "compared with random groups", "steps" if _within_run(members) else "epochs", "value",
        "by chance", "strongest z", "smallest q", "significant"]
    body = []
    for f in found[:TOP_FINDINGS]:
        tested = sum(np.isfinite(r["p_value"]) for r in members
                     if (r["group_a"], r["group_b"], r["layer"], r["measure"], r["statistic"])
                     == (f.group_a, f.group_b, f.layer, f.measure, f.statistic))
        row = f.rows[0]
        if f.statistic == "change":
            when = (f"{row['from_epoch']} → {row['epoch']}" if "epoch" in row
                    else f"{row['first_epoch']} → {row['last_epoch']}")
        else:
            when = _span(f.rows, [_position(r) for r in f.rows])
        what = ("change " if f.statistic == "change" else "") + ("lower" if f.lower else "higher")
        body.append(([f"{f.group_a} − {f.group_b}"] if several_pairs else []) + [
            f.layer, GEOMETRY_MEASURE_NAMES[f.measure].format(a=f.group_a, b=f.group_b), what, when,
            _signed(f.value, 3), _signed(f.chance, 3), _cell(row["effect"]), _cell(min(r["q_value"] for r in f.rows)), f"{len(f.rows)} of {tested}"])
    return _table(header, body, "findings"), len(body), len(found)


def loss_text(runs):
    """The loss and the accuracy per group in a sentence, or ``""``."""
    parts = []
    loss = last_epoch_loss_by_group(runs)
    if loss:
        epoch, values = loss
        parts.append(f"Training loss in the last epoch ({epoch}), median over runs: "
                     + ", ".join(f"{g} {v:.3g}" for g, v in values.items()) + ".")
    validation = validation_by_group(runs)
    if validation:
        metric, split, medians = validation
        where = " (the held-out fold)" if split == "validation" else " (no held-out data)"
        parts.append(f"{split.capitalize()} {metric}{where}, median over runs: "
                     + ", ".join(f"{g} {v:.3g}" for g, v in medians.items()) + ".")
    return " ".join(parts)


def console_summary(runs, pairs, rows):
    """The closing block's lines: what was compared, against what, how many tests, how
    many significant, and the strongest differences, one line each."""
    sizes, unit = group_sizes(runs)
    lines = [
        f"compared {pairs_text(pairs)}; {design(runs)}",
        "groups   " + ", ".join(f"{g} {_number(n)}" for g, n in sizes.items()) + f" {unit}"
        + (f" (imbalance {imbalance(sizes):.2f}:1)" if imbalance(sizes) > 1.05 else ""),
        "target   " + target_statement(runs),
        "tests    " + inference_statement(rows),
    ]
    for name in (*SPECTRA_FAMILIES, GEOMETRY):
        members = [r for r in rows if r["family"] == name]
        if members:
            tested = sum(np.isfinite(r["p_value"]) for r in members)
            found = sum(r["significant"] for r in members)
            lines.append(f"{name:10} {len(members)} tests ({tested} with values to compare), {found} significant "
                         f"at FDR {_level_text(rows)}")
    found = differences(rows)
    if found:
        lines.append("strongest differences:")
        for difference in found[:TOP_LINES]:
            strongest = difference.directions[0]
            data = "input data: " if difference.family != stats.FAMILIES[0] else ""
            lines.append(f"  {data}{difference.layer} · {wording.kind_name(difference.kind)}: "
                         + _direction_text(strongest, rows, len(pairs) > 1))
        if len(found) > TOP_LINES:
            lines.append(f"  and {len(found) - TOP_LINES} more (report.html, tests.csv)")
    elif spectra_rows(rows) and not rows[0]["inference"].startswith("none"):
        what = "no spectrum differs" if geometry_rows(rows) else "nothing differs"  # the geometry is told below
        lines.append(f"found    {what} beyond what random groups of the same sizes show"
                     if _reference(rows) == "null" else "found    nothing")
    if geometry_rows(rows) and not rows[0]["inference"].startswith("none"):
        directions = geometry_findings(rows)
        if directions:
            lines.append("gradient geometry (do the groups pull the weights the same way?):")
            lines += [f"  {text}" for text in [_same_direction_text(rows, pairs)] if text]
            lines += [f"  {geometry_text(f, len(pairs) > 1)}" for f in directions[:TOP_LINES]]
            if len(directions) > TOP_LINES:
                lines.append(f"  and {len(directions) - TOP_LINES} more (report.html, tests.csv)")
        else:
            lines.append(f"geometry  {_nothing_in_geometry(rows)} beyond what random groups of the same sizes show")
    return lines


def _number(value):
    return "?" if value is None else f"{value:.1f}" if isinstance(value, float) and value % 1 else f"{int(value)}"


def _cell(value):
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.3g}"
    return html.escape(str(value))


def _table(header, body, classes=""):
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in body)
    return f"<table class='{classes}'><tr>{head}</tr>{rows}</table>"


def _findings_lines(difference, members):
    """The table lines of one difference: a line per summary and direction, strongest first."""
    pair = (difference.group_a, difference.group_b)
    lines = []
    for direction in difference.directions:
        for summary in direction.summaries:
            mine = [r for r in difference.rows if r["summary"] == summary
                    and (r["effect"] > 0) == (direction.higher == difference.group_a)]
            tested = sum(np.isfinite(r["p_value"]) for r in members if (r["group_a"], r["group_b"]) == pair
                         and (r["layer"], r["kind"], r["summary"]) == (difference.layer, difference.kind, summary))
            lines.append((abs(mine[0]["effect"]), [
                wording.summary_name(summary), direction.higher, _span(members, [_position(r) for r in mine]),
                _cell(mine[0]["effect"]), _cell(min(r["q_value"] for r in mine)), f"{len(mine)} of {tested}"]))
    return [line for _, line in sorted(lines, key=lambda item: -item[0])]


def _findings_table(members, several_pairs):
    """The significant tests of a family: a line per summary and direction, grouped by
    layer and kind (the strongest group first), the first `TOP_FINDINGS` lines.

    Returns:
        ``(HTML, lines shown, lines in all)``.
    """
    header = (["groups"] if several_pairs else []) + [
        "layer", "kind", "summary", "higher in", "steps" if _within_run(members) else "epochs", "strongest effect",
        "smallest q", "significant"]
    grouped = [(d, _findings_lines(d, members)) for d in differences(members)]
    body, shown = [], 0
    for difference, lines in grouped:
        lines = lines[:TOP_FINDINGS - shown]
        if not lines:
            break
        group = ([f"{difference.group_a} − {difference.group_b}"] if several_pairs else []) + [
            difference.layer, wording.kind_name(difference.kind)]
        span = f" rowspan='{len(lines)}'" if len(lines) > 1 else ""
        for i, line in enumerate(lines):
            lead = "".join(f"<td{span} class='group'>{html.escape(c)}</td>" for c in group) if i == 0 else ""
            body.append(f"<tr>{lead}" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>")
        shown += len(lines)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    table = f"<table class='findings'><tr>{head}</tr>{''.join(body)}</table>"
    return table, shown, sum(len(lines) for _, lines in grouped)


def flat_metadata(metadata):
    """Metadata as ``{name: text}``: dicts (also those stored as JSON text) spread into
    ``parent.key`` entries, lists joined, empty values left out."""
    out = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat_metadata(value).items()})
        elif isinstance(value, list):
            if value:
                out[key] = ", ".join(map(str, value))
        elif value is not None and value != "":
            out[key] = _cell(value) if isinstance(value, float) else str(value)
    return out


def _run_results(run):
    """What one run reached: its last epoch's training loss and the evaluation per group."""
    out = {}
    if run.epochs["logs"] and "loss" in run.epochs["logs"][-1]:
        out["final training loss"] = _cell(float(run.epochs["logs"][-1]["loss"]))
    evaluation = run.attributes.get("evaluation")
    if evaluation:
        for group, value in evaluation["by_group"].items():
            out[f"{evaluation['split']} {evaluation['metric']}: {group}"] = _cell(float(value))
    return out


def runs_table(runs, folder=None):
    """One row per run, a column per option that varies between the runs; the options
    they share listed once below it.

    Args:
        runs: the `tf_autospec.Run` s.
        folder: file names are shown relative to it (default: as given).

    Returns:
        HTML.
    """
    flat = [flat_metadata(run.metadata) for run in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    varying = [k for k in keys if len({f.get(k) for f in flat}) > 1]
    shared = [k for k in keys if k not in varying]
    results = [_run_results(run) for run in runs]
    result_keys = list(dict.fromkeys(k for r in results for k in r))
    body = [[os.path.relpath(run.path, folder) if folder else run.path, len(run)]
            + [f.get(k, "") for k in varying] + [r.get(k, "") for k in result_keys]
            for run, f, r in zip(runs, flat, results)]
    table = _table(["file", "recorded steps"] + varying + result_keys, body, "runs")
    if shared:
        items = "".join(f"<div><span>{html.escape(k)}</span> {html.escape(flat[0][k])}</div>" for k in shared)
        table += f"<p class='note'>Shared by every run:</p><div class='shared'>{items}</div>"
    return table


def _kinds_text(kinds):
    return "; ".join(f"{kind}, {wording.KIND_DEFINITIONS[kind]}" for kind in kinds if kind in wording.KIND_DEFINITIONS)


def _runs_statistic(runs):
    return (f"Lines: the median over the {len(runs)} runs; bands: their interquartile range (25th to 75th "
            "percentile)." if len(runs) > 1 else "One run.")


def spectra_caption(runs, summary, per_epoch, kinds):
    """The caption of `plot.overview` and `plot.layer_panels`: what each curve is."""
    unit = "" if wording.is_scale_free(summary) else (
        " Per sample: grad divided by the group's samples in the batch, act and delta by its square root; groups "
        "of different sizes still differ by size alone, which the tests account for and the curves do not.")
    x = ("epoch (each run's mean over the epoch's steps)" if per_epoch else "training step")
    return (f"The {wording.summary_name(summary)} of each group's spectra ({_kinds_text(kinds)}). "
            f"{_runs_statistic(runs)}{unit} x: the {x}, from 0. Axes marked 'log scale' are logarithmic, where the "
            "values span more than two decades.")


def _effect_caption(rows, group_a, group_b):
    if _reference(rows) == "null":
        effect = ("z: the difference between the groups beyond what random groups of the same sizes show, in "
                  "SDs of those random groups' differences")
    else:
        effect = "Hedges' g between the runs' values (the older test: equal group sizes assumed)"
    return f"{effect}; red: {group_a} higher, blue: {group_b} higher; dots: significant at FDR {_level_text(rows)}."


def findings_map_caption(rows, group_a, group_b):
    """The caption of `plot.findings_map`."""
    return (f"Each row is a layer and kind, each column an epoch (from 0); the colour is the strongest effect of "
            f"any tested summary in that cell. {_effect_caption(rows, group_a, group_b)} The colour scale reaches "
            f"at least ±{wording.MAP_BOUND:g}, so that effects of the size chance gives stay pale.")


def heatmap_caption(rows, group_a, group_b):
    """The caption of `plot.difference_heatmap`."""
    return (f"{group_a} − {group_b} per singular value (rows; 1 = the largest, per sample) and epoch (from 0). "
            + _effect_caption(rows, group_a, group_b))


def loss_caption(runs):
    """The caption of `plot.loss_curves`."""
    group = ("each group's mean training loss over its samples in each epoch's steps" if records_group_loss(runs)
             else "the training loss of all samples (these files record no loss per group)")
    return (f"Solid: {group}; dashed: the validation loss of the held-out fold, where there is one. "
            f"{_runs_statistic(runs)} Epochs from 0.")


def _image_html(figure):
    width = int.from_bytes(figure.png[16:20], "big") * PIXELS_PER_INCH // FIGURE_DPI  # the PNG header's width
    return (f"<img alt='{html.escape(figure.title)}' width='{width}' "
            f"src='data:image/png;base64,{base64.b64encode(figure.png).decode()}'>")


def _section_html(section, lead=False):
    """A section's figures with its caption: under the figure beside the summary, under
    the title in the body of the page (where several figures share it)."""
    if lead:
        return "".join(f"<figure>{_image_html(f)}<figcaption><b>{html.escape(section.title)}.</b> "
                       f"{html.escape(section.caption)}</figcaption></figure>" for f in section.figures)
    several = len(section.figures) > 1
    figures = "".join(f"<figure>{_image_html(f)}"
                      + (f"<figcaption>{html.escape(f.title)}</figcaption>" if several else "") + "</figure>"
                      for f in section.figures)
    return (f"<h3>{html.escape(section.title)}</h3><p class='caption'>{html.escape(section.caption)}</p>"
            f"<div class='gallery'>{figures}</div>")


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:18px 28px;max-width:1340px;line-height:1.4;
color:#222}
h1{font-size:24px;margin:0 0 8px}h2{font-size:19px;margin:26px 0 8px;border-bottom:1px solid #ddd}
.top{display:grid;grid-template-columns:minmax(360px,5fr) minmax(420px,6fr);gap:22px;align-items:start}
@media(max-width:1000px){.top{grid-template-columns:1fr}}
.answer p{margin:6px 0}.answer ul{margin:2px 0 8px 18px;padding:0}.answer li{margin:2px 0}
.compared{color:#333}.plain{color:#555}
figure{margin:0 0 14px}img{max-width:100%;height:auto}.gallery{display:flex;flex-wrap:wrap;gap:8px 18px}
.gallery figure{margin:0}figcaption,.caption{font-size:13px;color:#444;margin:3px 0 6px;max-width:1000px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f0f0f0}td.group{background:#fafafa;font-weight:600}
.note{color:#555;font-size:13px}.shared{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));
font-size:13px;gap:1px 18px}.shared span{color:#666}
"""


def write(path, runs, pairs, rows, sections, lead=(), tests_csv=None):
    """Writes the self-contained HTML report.

    Args:
        path: the ``.html`` file.
        runs: the `tf_autospec.Run`s compared.
        pairs: the pairs of groups compared.
        rows: the test rows (`tf_autospec.stats`): the spectra's, and the gradient
            geometry's where tested (one `stats.combine`d table).
        sections: `ReportSection` s shown under "Figures".
        lead: `ReportSection` s shown beside the summary (where the groups differ, the loss).
        tests_csv: the path of the full table of tests, relative to the page, to link to.
    """
    answer = [f"<p class='compared'>{html.escape(compared_text(runs, pairs))}</p>"]
    if stats.target_follows_groups(runs):
        answer.append(f"<p><b>{html.escape(target_statement(runs))}</b></p>")
    elif _reference(rows) != "null":
        answer.append(f"<p><b>{html.escape(inference_statement(rows))}</b></p>")
    for family in SPECTRA_FAMILIES:
        if stats.target_follows_groups(runs):
            break
        result = family_answer(rows, family, pairs)
        if result is None:
            continue
        headline, sentences, unchanged = result
        answer.append(f"<p><b>{html.escape(headline)}</b></p>")
        if sentences:
            answer.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>")
        if unchanged:
            answer.append(f"<p class='plain'>No difference beyond chance in {html.escape(unchanged)}.</p>")
    direction = None if stats.target_follows_groups(runs) else geometry_answer(rows, pairs)
    if direction:
        headline, sentences = direction
        answer.append(f"<p><b>{html.escape(headline)}</b></p>")
        if sentences:
            answer.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>")
    losses = loss_text(runs)
    if losses:
        answer.append(f"<p>{html.escape(losses)}</p>")
    answer.append(f"<p class='note'>{html.escape(reading_note(rows, runs))}</p>")
    link = (f" <a href='{html.escape(tests_csv)}'>{html.escape(os.path.basename(tests_csv))}</a> holds every test."
            if tests_csv else "")
    parts = [f"<div class='top'><div class='answer'>{''.join(answer)}</div><div>"
             + "".join(_section_html(section, lead=True) for section in lead) + "</div></div>"]
    if sections:
        parts.append("<h2>Figures</h2>" + "".join(_section_html(section) for section in sections))
    parts.append("<h2>Findings</h2>")
    parts += _findings_html(rows, pairs, link)
    parts.append("<h2>Runs</h2>" + runs_table(runs, os.path.dirname(os.path.abspath(path))))
    title = f"AutoSpec report: {' vs '.join(runs[0].groups)}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


def _family_heading(rows, name):
    members = [r for r in rows if r["family"] == name]
    what = {SPECTRA_FAMILIES[0]: "how the model trains: gradients and the signals they are made of",
            SPECTRA_FAMILIES[1]: "the first layers' input spectra: the data itself, not how the model trains",
            GEOMETRY: "whether the groups pull the weights the same way: the cosine of their gradients, each "
                      "group's cosine with the batch's gradient, the overlap of their top input directions"}[name]
    return (f"<h3>{html.escape(name.capitalize())}</h3><p class='note'>{html.escape(what.capitalize())}. "
            f"{len(members)} tests, {sum(r['significant'] for r in members)} significant at FDR "
            f"{_level_text(rows)}.</p>")


def _findings_html(rows, pairs, link):
    """The findings' tables, each family under its heading, each kind of table with the
    note that says how to read it; then the link to every test."""
    parts = []
    for name in (*SPECTRA_FAMILIES, GEOMETRY):
        members = [r for r in rows if r["family"] == name]
        if not members:
            continue
        if name == GEOMETRY and any(r["significant"] for r in spectra_rows(rows)):
            parts.append(_spectra_note(rows))
        parts.append(_family_heading(rows, name))
        if any(r["significant"] for r in members):
            table, shown, total = (_geometry_table if name == GEOMETRY else _findings_table)(members, len(pairs) > 1)
            parts.append(table)
            if shown < total:
                parts.append(f"<p class='note'>The strongest {shown} of {total} lines.{link}</p>")
            if name == GEOMETRY:
                parts.append(
                    "<p class='note'>compared with random groups: whether the value is higher or lower than random "
                    "groups of the same sizes give (a cosine lower than chance: the groups' gradients are less "
                    "aligned; negative values: opposed; change: its change between the two epochs). value: the mean "
                    "over the runs of each run's epoch mean, averaged over the significant epochs; by chance: the "
                    "same for random groups of the same sizes (the null partitions). strongest z: the difference from "
                    "them in SDs of theirs. smallest q and significant as above.</p>")
    if any(r["significant"] for r in spectra_rows(rows)) and not geometry_rows(rows):
        parts.append(_spectra_note(rows))
    if link:
        parts.append(f"<p class='note'>{link.strip()}</p>")
    return parts


def _spectra_note(rows):
    """How to read the spectra's findings table."""
    effect = ("the difference between the groups beyond random groups of the same sizes, in SDs of the "
              "differences those show by chance (z)" if _reference(rows) == "null" else "Hedges' g")
    return ("<p class='note'>kind: " + html.escape(_kinds_text(wording.KIND_DEFINITIONS)) + ". summary: what of the "
            "singular values is compared (spectral norm: the largest; nuclear norm: their sum; effective rank: how "
            "many directions carry the signal; σᵢ: the i-th largest), per sample. higher in: the group whose value "
            "is higher. epochs: those where the test is significant (from 0). strongest effect: " + html.escape(effect)
            + ", the largest over those epochs, positive when the first group of the pair is higher. smallest q: the "
            "smallest Benjamini–Hochberg q among them, within the family (each family at FDR 0.05 divided by the "
            "number of families). significant: epochs significant of those tested.</p>")
