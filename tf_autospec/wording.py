"""One vocabulary for people: how figures, the report and the console name kinds,
summaries, epoch ranges and durations."""

import re

KIND_NAMES = {"grad": "weight gradient", "act": "input", "delta": "gradient at the output"}
KIND_DEFINITIONS = {
    "grad": "the layer's weight gradient (the group's share of it)",
    "act": "the layer's input",
    "delta": "the gradient of the loss at the layer's output",
}
_SUMMARY_NAMES = {
    "spectral_norm": "spectral norm",
    "nuclear_norm": "nuclear norm",
    "frobenius_norm": "Frobenius norm",
    "effective_rank": "effective rank",
    "stable_rank": "stable rank",
}
# Ratios of singular values: the same per sample as recorded, and without a unit.
_SCALE_FREE_UNITS = {"effective_rank": "directions", "stable_rank": "directions", "top_energy": "share of energy"}
GEOMETRY_MEASURE_NAMES = {
    "cosine": "direction",
    "overlap": "the input directions the gradients use",
    "batch_cosine": "how much the step follows each group",
}
MAP_BOUND = 5.0  # the least reach of the findings map's colour scale, in z: effects of chance's size stay pale
SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def kind_name(kind):
    """``"weight gradient (grad)"``, ``"input (act)"``, ``"gradient at the output (delta)"``."""
    return f"{KIND_NAMES[kind]} ({kind})" if kind in KIND_NAMES else kind


def summary_name(summary):
    """``"spectral norm"``, ``"σ₂"``, ``"top-3 energy"``... for a `tf_autospec.summaries` name."""
    sigma = re.fullmatch(r"sigma_(\d+)", summary)
    if sigma:
        return "σ" + sigma.group(1).translate(SUBSCRIPTS)
    energy = re.fullmatch(r"top_energy(?:_(\d+))?", summary)
    if energy:
        return f"top-{energy.group(1) or 1} energy"
    return _SUMMARY_NAMES.get(summary, summary.replace("_", " "))


def is_scale_free(summary):
    """Whether a summary is a ratio of singular values (a rank, a share), the same per
    sample as recorded."""
    return summary.startswith("top_energy") or summary in _SCALE_FREE_UNITS


def axis_label(summary, normalize):
    """A y-axis label with the summary's unit: ``"spectral norm per sample"``,
    ``"effective rank (directions)"``."""
    if is_scale_free(summary):
        unit = _SCALE_FREE_UNITS["top_energy" if summary.startswith("top_energy") else summary]
        return f"{summary_name(summary)} ({unit})"
    return f"{summary_name(summary)}{' per sample' if normalize else ''}"


def span(numbers):
    """Integers as ranges: ``[0, 1, 2, 5, 7, 8]`` -> ``"0–2, 5, 7–8"``."""
    numbers = sorted(set(int(n) for n in numbers))
    ranges = []
    for n in numbers:
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in ranges)


def duration(seconds):
    """``"48 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
