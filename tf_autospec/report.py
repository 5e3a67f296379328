"""What a comparison of groups found, in words: the console summary and the HTML report.

Both lead with what was compared (groups and their sizes, the design, the target, what the
tests are against and what they can say), then what was found, family by family.
"""

import html
import json

import numpy as np

from tf_autospec import stats

TOP_FINDINGS = 20


def _metadata(runs, key):
    """The value of a metadata key in every run that has it."""
    return [run.metadata[key] for run in runs if key in run.metadata]


def design(runs):
    """The design in words: runs, folds × seeds, and what the seeds and folds replicate."""
    folds, seeds = set(_metadata(runs, "fold")), set(_metadata(runs, "seed"))
    text = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    if folds and seeds:
        text += f" ({len(folds)} fold{'s' if len(folds) != 1 else ''} × {len(seeds)} seed{'s' if len(seeds) != 1 else ''})"
    if len(folds) > 1:
        text += "; folds train on different subsets of the subjects"
    if len(seeds) > 1:
        text += "; seeds re-train on the same subjects (they make each estimate less noisy, they add no subjects)"
    return text


def group_sizes(runs):
    """``({group: subjects}, unit)`` as the experiment recorded them (the training subjects
    of the first run, and in all), or the mean samples per recorded step when the runs do
    not say."""
    recorded, total = _metadata(runs, "group_sizes"), _metadata(runs, "group_sizes_all")
    if recorded:
        sizes = {group: recorded[0].get(group) for group in runs[0].groups}
        if total and total[0] != recorded[0]:
            every = ", ".join(f"{g} {total[0].get(g)}" for g in runs[0].groups)
            return sizes, f"subjects per training set ({every} in all)"
        return sizes, "subjects"
    return {group: float(np.mean([np.mean(run.counts(group)) for run in runs])) for group in runs[0].groups}, \
        "samples per step (mean)"


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


def inference_statement(rows):
    references = {row["test"].rsplit("_", 1)[-1] for row in rows}
    if rows and rows[0]["inference"].startswith("none"):
        withheld = sum(bool(np.isfinite(r["q_value"]) and r["q_value"] <= 0.05) for r in rows)
        return (f"No finding is claimed: the groups are the prediction target ({withheld} tests would pass "
                "q ≤ 0.05 against random groups, which mix the classes; tests.csv has them).")
    if references == {"null"}:
        return ("Each difference is tested against the same difference between random groups of the same sizes "
                "drawn from the same subjects (the runs' null partitions): group size alone cannot make a "
                "finding, and the subjects, not the seeds, are the replicates; what is found holds for the "
                "population these subjects are exchangeable with.")
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


def _span(epochs):
    epochs = sorted(epochs)
    return str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}" if epochs == list(
        range(epochs[0], epochs[-1] + 1)) else ", ".join(map(str, epochs))


def findings(rows):
    """Significant rows merged over epochs: one finding per pair, family, layer, kind and
    summary, with its epochs, its strongest effect and smallest q; strongest first."""
    merged = {}
    for row in rows:
        if not row["significant"]:
            continue
        key = (row["family"], row["group_a"], row["group_b"], row["layer"], row["kind"], row["summary"])
        entry = merged.setdefault(key, {"epochs": [], "effect": 0.0, "q": 1.0, "direction": 0})
        entry["epochs"].append(row.get("epoch", row.get("first_step")))
        if abs(row["effect"]) > abs(entry["effect"]):
            entry["effect"] = row["effect"]
        entry["q"] = min(entry["q"], row["q_value"])
    out = [dict(zip(("family", "group_a", "group_b", "layer", "kind", "summary"), key), **value)
           for key, value in merged.items()]
    return sorted(out, key=lambda f: -abs(f["effect"]))


def console_summary(runs, pairs, rows):
    """A few lines: what was compared, against what, and what was found."""
    sizes, unit = group_sizes(runs)
    lines = [
        f"compared {', '.join(f'{a} vs {b}' for a, b in pairs)}; {design(runs)}",
        "groups   " + ", ".join(f"{g} {_number(n)}" for g, n in sizes.items()) + f" {unit}"
        + (f" (imbalance {imbalance(sizes):.2f}:1)" if imbalance(sizes) > 1.05 else ""),
        "target   " + target_statement(runs),
        "tests    " + inference_statement(rows),
    ]
    for name in stats.FAMILIES:
        members = [r for r in rows if r["family"] == name]
        if members:
            tested = sum(np.isfinite(r["p_value"]) for r in members)
            found = sum(r["significant"] for r in members)
            lines.append(f"{name:8} {len(members)} tests ({tested} with values to compare), {found} significant "
                         f"at FDR {_family_level(rows):g}")
    top = findings(rows)[:3]
    for finding in top:
        lines.append(f"  {finding['group_a']} vs {finding['group_b']}: {finding['layer']} {finding['kind']} "
                     f"{finding['summary']}, epochs {_span(finding['epochs'])}, effect {finding['effect']:+.2f} "
                     f"(q {finding['q']:.2g})")
    return lines


def _family_level(rows, alpha=0.05):
    """The FDR level of each family: ``alpha`` shared by the families present."""
    return alpha / max(len({row["family"] for row in rows}), 1)


def _number(value):
    return "?" if value is None else f"{value:.1f}" if isinstance(value, float) and value % 1 else f"{int(value)}"


def _cell(value):
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.3g}"
    return html.escape(str(value))


def _table(header, body):
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _runs_table(runs):
    """One row per run, a column per metadata key whose value varies; the shared ones below."""
    keys = sorted({k for run in runs for k in run.metadata if not isinstance(run.metadata[k], (dict, list))})
    varying = [k for k in keys if len({json.dumps(run.metadata.get(k)) for run in runs}) > 1]
    shared = [k for k in keys if k not in varying and k in runs[0].metadata]
    body = [[run.path, len(run)] + [run.metadata.get(k, "") for k in varying] for run in runs]
    table = _table(["file", "recorded steps"] + varying, body)
    common = ", ".join(f"{k} = {runs[0].metadata[k]}" for k in shared)
    return table + (f"<p>Shared by every run: {html.escape(common)}.</p>" if common else "")


def write(path, runs, pairs, rows, sections):
    """Writes the self-contained HTML report.

    Args:
        path: the ``.html`` file.
        runs: the `tf_autospec.Run`s compared.
        pairs: the pairs of groups compared.
        rows: the test rows (`tf_autospec.stats`).
        sections: ``[(title, base64 PNG), ...]``, the figures.
    """
    sizes, unit = group_sizes(runs)
    parts = [f"<p>{html.escape(line)}</p>" for line in (
        f"Compared: {', '.join(f'{a} vs {b}' for a, b in pairs)}; {design(runs)}.",
        "Group sizes: " + ", ".join(f"{g} {_number(n)}" for g, n in sizes.items()) + f" {unit}"
        + (f"; the largest group is {imbalance(sizes):.2f} times the smallest." if imbalance(sizes) > 1.05 else "."),
        target_statement(runs),
        inference_statement(rows),
    )]
    validation = validation_by_group(runs)
    if validation:
        metric, split, medians = validation
        parts.append(f"<p>{html.escape(f'{split.capitalize()} {metric} per group (median over runs): ')}"
                     + html.escape(", ".join(f"{g} {v:.3g}" for g, v in medians.items()))
                     + ". A model near chance learns little from anyone: read its spectra with that in mind.</p>")
    found = findings(rows)
    for name in stats.FAMILIES:
        members = [r for r in rows if r["family"] == name]
        if not members:
            continue
        what = ("The first layers' input spectra: the data itself, not how the model trains"
                if name == "input data" else "How the model trains: gradients and the signals they are made of")
        listed = [f for f in found if f["family"] == name]
        merged = f", {len(listed)} findings once their epochs are merged, strongest first" if listed else ""
        parts.append(f"<h2>{html.escape(name.capitalize())}</h2><p>{html.escape(what)}. {len(members)} tests, "
                     f"{sum(r['significant'] for r in members)} significant at FDR {_family_level(rows):g}"
                     f"{merged}.</p>")
        if listed:
            parts.append(_table(
                ["groups", "layer", "kind", "summary", "epochs", "effect", "smallest q"],
                [[f"{f['group_a']} − {f['group_b']}", f["layer"], f["kind"], f["summary"], _span(f["epochs"]),
                  f["effect"], f["q"]] for f in listed[:TOP_FINDINGS]]))
            if len(listed) > TOP_FINDINGS:
                parts.append(f"<p>{len(listed) - TOP_FINDINGS} more in tests.csv.</p>")
    parts.append("<p class='note'>grad: the layer's weight gradient (the group's share of it); act: the layer's "
                 "input; delta: the gradient of the loss at the layer's output. Effect: the difference beyond "
                 "random groups of the same sizes, in SDs of its chance variation (z), or Hedges' g for the older "
                 "tests; positive when the first group is larger. q: Benjamini–Hochberg within the family; each "
                 "family at 0.05 divided by the number of families, so that the whole report keeps 0.05. "
                 "Every test is in tests.csv.</p>")
    parts.append("<h2>Figures</h2><p class='note'>Lines: the median over the runs; bands: the 25th to 75th "
                 "percentiles. Spectra per sample (grad divided by the group's samples, act and delta by their "
                 "square root). Groups of different sizes differ in these curves by size alone; the tests above "
                 "compare each difference with random groups of the same sizes.</p>" + "".join(
        f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{image}'>"
        for title, image in sections))
    parts.append("<h2>Runs</h2>" + _runs_table(runs))
    title = f"AutoSpec report: {' vs '.join(runs[0].groups)}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1100px;line-height:1.4}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
            "th{background:#eee}img{max-width:100%}.note{color:#555;font-size:13px}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
