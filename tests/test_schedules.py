"""Recording schedules: which steps record, and the schedule saved with the model and in
the run file."""

import json

import keras
import numpy as np
import pytest

import tf_autospec as ts
from tf_autospec import schedules


def test_the_built_in_schedules_record_these_steps():
    assert schedules.every(3).recorded_steps(10) == [0, 3, 6, 9]
    assert schedules.log_spaced(10).recorded_steps(170) == [0, 1, 2, 3, 4, 6, 7, 8, 10, 13, 16, 20, 26, 32, 40,
                                                          51, 64, 80, 100, 126, 159]
    assert len(schedules.log_spaced(10).recorded_steps(9380)) == 38
    assert schedules.log_spaced(3).recorded_steps(40) == [0, 1, 3, 5, 10, 22]
    assert schedules.dense_then_every(4, 5).recorded_steps(20) == [0, 1, 2, 3, 4, 9, 14, 19]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            schedules.every(bad)


def _model(**options):
    inputs = keras.Input((6,))
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(2)(keras.layers.Dense(4)(inputs)), groups=["HC", "SZ"],
                             **options)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(n=160):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 2, n), rng.integers(0, 2, n)


@keras.saving.register_keras_serializable(package="test_schedules")
def odd_steps(step):
    return step % 2 == 1


@pytest.mark.parametrize("schedule, expected", [
    (schedules.log_spaced(10), [0, 1, 2, 3, 4, 6, 7, 8, 10, 13, 16]),
    (schedules.dense_then_every(3, 4), [0, 1, 2, 3, 7, 11, 15, 19]),
    (odd_steps, list(range(1, 20, 2))),
])
def test_fit_records_the_scheduled_steps_and_saves_the_schedule(schedule, expected, tmp_path):
    model = _model(schedule=schedule)
    recorded = []

    class Seen(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            spectra = self.model.last_spectra
            recorded.append(None if spectra is None else spectra.step)

    x, y, labels = _data()
    model.fit(x, y, groups=labels, batch_size=16, epochs=2, verbose=0,
              callbacks=[Seen(), ts.AutoSpecCallback(tmp_path / "run.h5")])
    assert [step for step in recorded if step is not None] == expected
    assert recorded.count(None) == 20 - len(expected)
    run = ts.load(tmp_path / "run.h5")
    np.testing.assert_array_equal(run.records["step"], expected)
    stored = run.attributes["options"]["schedule"]
    assert keras.saving.deserialize_keras_object(stored)(5) == schedule(5)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert [loaded.autospec_schedule(s) for s in range(40)] == [schedule(s) for s in range(40)]


def test_resuming_with_another_schedule_is_refused(tmp_path):
    x, y, labels = _data()
    model = _model(schedule=schedules.log_spaced(10))
    model.fit(x, y, groups=labels, batch_size=16, epochs=1, verbose=0,
              callbacks=[ts.AutoSpecCallback(tmp_path / "run.h5")])
    other = _model(schedule=schedules.every(5))
    with pytest.raises(ts.StoreError, match="schedule"):
        other.fit(x, y, groups=labels, batch_size=16, epochs=2, initial_epoch=1, verbose=0,
                  callbacks=[ts.AutoSpecCallback(tmp_path / "run.h5")])


def test_every_n_steps_is_a_shorthand_and_not_both():
    assert _model(every_n_steps=4).autospec_schedule == schedules.every(4)
    assert ts.serialization.options_config(_model(every_n_steps=4))["schedule"] is None
    with pytest.raises(ValueError, match="either schedule= or every_n_steps="):
        _model(every_n_steps=4, schedule=schedules.every(2))
    with pytest.raises(TypeError, match="callable step -> bool"):
        _model(schedule=10)
    assert json.dumps(ts.serialization.options_config(_model(schedule=schedules.dense_then_every(5, 2))))
