"""Recording schedules: at which optimizer steps a model records its spectra.

A schedule is called with the optimizer step (0-based, the one `StepSpectra.step`
reports) and says whether that step records. The steps in between run `keras.Model`'s
own training step and cost what plain training costs.

    model = tf_autospec.AutoSpecModel(..., schedule=tf_autospec.schedules.log_spaced(10))

Built-ins (saved with the model and in the run file): `every`, `log_spaced`,
`dense_then_every`. Any callable ``step -> bool`` works too; to save a model with it,
register it with ``keras.saving.register_keras_serializable`` (as for any Keras object).
"""

import math

import keras

from tf_autospec import serialization


class Schedule:
    """Base of the built-in schedules: a callable ``step -> bool`` with a Keras config."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return dict(vars(self))

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"

    def recorded_steps(self, steps):
        """The steps below ``steps`` that this schedule records (for planning a run)."""
        return [step for step in range(steps) if self(step)]


def _positive(name, value):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer; received {value!r}.")
    return int(value)


@serialization.register
class Every(Schedule):
    """Every ``n``-th step: 0, n, 2n, ... (`AutoSpecModel`'s ``every_n_steps=n``)."""

    def __init__(self, n):
        self.n = _positive("n", n)

    def __call__(self, step):
        return step % self.n == 0


@serialization.register
class LogSpaced(Schedule):
    """``per_decade`` recorded steps per decade of steps, dense at first: step ``s > 1``
    is recorded when it is the first in its bin ``⌊per_decade · log10(s)⌋`` (and steps 0
    and 1 always). With 10: 0, 1, 2, 3, 4, 6, 7, 8, 10, 13, 16, 20, 26, 32, 40, 51, 64,
    80, 100, 126, 159, ...; 38 steps of the first 9 380 (20 epochs of MNIST at batch
    128)."""

    def __init__(self, per_decade=10):
        self.per_decade = _positive("per_decade", per_decade)

    def _bin(self, step):
        return math.floor(self.per_decade * math.log10(step) + 1e-9)

    def __call__(self, step):
        return step <= 1 or self._bin(step) > self._bin(step - 1)


@serialization.register
class DenseThenEvery(Schedule):
    """Every step up to ``first`` (exclusive), then every ``n``-th: ``first``,
    ``first + n``, ..."""

    def __init__(self, first, n):
        self.first = _positive("first", first)
        self.n = _positive("n", n)

    def __call__(self, step):
        return step < self.first or (step - self.first) % self.n == 0


def every(n):
    """`Every`: record every ``n``-th step."""
    return Every(n)


def log_spaced(per_decade=10):
    """`LogSpaced`: dense at first, then about ``per_decade`` recorded steps per decade."""
    return LogSpaced(per_decade)


def dense_then_every(first, n):
    """`DenseThenEvery`: every step before ``first``, then every ``n``-th."""
    return DenseThenEvery(first, n)


def get(schedule, every_n_steps):
    """The schedule of a model: ``schedule`` (a callable, or its Keras config as saved),
    else ``every(every_n_steps)``."""
    every_n_steps = _positive("every_n_steps", every_n_steps)
    if schedule is None:
        return Every(every_n_steps)
    if every_n_steps != 1:
        raise ValueError(
            f"Give either schedule= or every_n_steps=, not both (received schedule={schedule!r}, "
            f"every_n_steps={every_n_steps}); every_n_steps=n is schedule=tf_autospec.schedules.every(n)."
        )
    if isinstance(schedule, dict):
        schedule = keras.saving.deserialize_keras_object(schedule)
    if not callable(schedule):
        raise TypeError(
            f"schedule must be a callable step -> bool (e.g. tf_autospec.schedules.log_spaced(10)); "
            f"received {schedule!r}."
        )
    return schedule


def config(schedule):
    """``schedule`` as the model's config and the run file store it (JSON-ready)."""
    return keras.saving.serialize_keras_object(schedule)


class ScheduledSteps:
    """The train function of ``fit`` under a schedule other than every step: the recording
    step at the scheduled steps, `keras.Model`'s own step (no capture, no exchange) at the
    others, so that the steps in between cost what plain training costs."""

    def __init__(self, model, recording, unrecorded):
        self.model = model
        self.recording = recording
        self.unrecorded = unrecorded

    def __call__(self, data):
        # The optimizer's step is the one source of truth: it survives checkpoints and
        # moves on with train_on_batch; reading it is one scalar copy.
        step = int(self.model.optimizer.iterations.numpy())
        return (self.recording if self.model.autospec_schedule(step) else self.unrecorded)(data)
