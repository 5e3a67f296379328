"""`AutoSpecModel`: a `keras.Model` that records per-group gradient spectra in `fit`."""

import contextlib
import functools
import hashlib
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_autospec import geometry as geometry_module
from tf_autospec import groups as groups_module
from tf_autospec import distributed, evaluation, group_loss, inputs, layer_paths, logits, schedules, serialization, solvers, spectra, tracking
from tf_autospec.capture import Recording, capture_for
from tf_autospec.keras_internals import Functional, keras_default, tree, unpack_x_y_sample_weight, unscale_loss_for_distribution
from tf_autospec.last_step import LastStep


def _functional_arguments(args, kwargs):
    return (len(args) == 2) or (len(args) == 1 and "outputs" in kwargs) or (
        "inputs" in kwargs and "outputs" in kwargs
    )


# XLA's CPU eigen-solvers take minutes on matrices of realistic size. Tests set this to
# compile the training step of tiny models with XLA on CPU, to exercise the GPU path.
XLA_ON_CPU = False


def _xla_allowed():
    return XLA_ON_CPU or bool(tf.config.list_logical_devices("GPU"))


class AutoSpecModel(keras.Model):
    """A `keras.Model` that records exact per-group gradient spectra during `fit`.

    For every tracked kernel (Dense, EinsumDense, Conv1D/2D/3D, Embedding, found at
    any depth), every declared group and every recorded step it computes ``grad`` =
    σ(G_g), ``act`` = σ(M_g A) and ``delta`` = σ(M_g Δ), where ``G_g = Aᵀ M_g Δ`` is
    group ``g``'s share of the kernel gradient (see ``docs/method.md``). The training
    update is exactly `keras.Model`'s: one forward pass, one ``tape.gradient`` call.

    Use it subclassed (``super().__init__(groups=[...])``), functional
    (``AutoSpecModel(inputs=..., outputs=..., groups=[...])``), or through
    `tf_autospec.wrap`.

    Args:
        groups: the group names, declared up front; labels are their indices
            ``0..G-1`` or the names themselves, ``-1`` for "in no group".
        layers: ``None`` (default) tracks every supported layer; otherwise a list of
            layer names or kernel paths (``"dense/kernel"``).
        kinds: which spectra to record, a subset of ``("grad", "act", "delta")``
            (default: all three).
        top_k: ``None`` (default) keeps every singular value up to the rank bound;
            an int keeps only the largest ``top_k`` per spectrum.
        randomized: with ``top_k``, compute the largest ``top_k`` singular values of
            wide factors and gradients on the fan route (many rows per group, e.g.
            convolutions, or batches larger than the layer) by randomized subspace
            iteration where that is cheaper than their Gram matrices; each value is then
            a lower bound within a documented distance of the exact one
            (`spectra.randomized_top_singular_values`). Default ``False``: exact.
        every_n_steps: record every n-th optimizer step (default 1: every step); a
            shorthand of ``schedule=tf_autospec.schedules.every(n)``.
        schedule: at which optimizer steps to record: a callable ``step -> bool`` such as
            ``tf_autospec.schedules.log_spaced(10)`` or ``dense_then_every(100, 50)``
            (default ``None``: ``every_n_steps``). The other steps run `keras.Model`'s
            own training step.
        precision: ``"float64"`` (default): the factors' Gram matrices in float64, every
            singular value exact to ~1e-7 × σ_1 (`tf_autospec.spectra`); ``"float32"``
            (opt-in): Gram matrices in float32, about twice as fast on large factors
            (convolutions, long sequences), each value within ``√(w·ε₃₂)·σ_1`` (0.3–2 %
            of σ_1 for widths 64–4096), smaller values stored as 0.
        null_partitions: how many null partitions to record beside the groups (default
            0): random relabelings of the subjects that keep every group's size, fixed for
            the whole run (`tf_autospec.null_partitions`), whose spectra are computed at
            every recorded step from the same rows. They are the reference of
            `tf_autospec.stats` for "groups of these sizes drawn at random from these
            subjects" (see ``docs/analysis.md``). Labels given as arrays get them drawn
            here (every sample a subject, seed 0); labels from a `tf.data.Dataset`, or
            several samples per subject, or CV folds, need them drawn once for the whole
            dataset: ``groups=tf_autospec.null_partitions(labels, P, subjects=ids)``.
        geometry: the group gradient geometry to record with the spectra
            (`tf_autospec.geometry`): ``True`` (default) both measures, ``False`` none,
            or a subset of ``("cosine", "overlap")``. ``cosine``: between every pair of
            groups' gradients, and of each group's with the whole batch's; ``overlap``:
            of every pair's top-``overlap_k`` left singular subspaces.
        overlap_k: the ``k`` of ``overlap`` (default 3; at most the kernel's smaller fan).
        **kwargs: passed to `keras.Model` (``name``, or ``inputs``/``outputs``).

    Example:

    ```python
    class Net(tf_autospec.AutoSpecModel):
        def __init__(self):
            super().__init__(groups=["HC", "SZ"])
            self.hidden = keras.layers.Dense(64, activation="relu")
            self.out = keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))

    model = Net()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, groups=labels, epochs=2)
    model.last_spectra.spectrum("dense/kernel", "grad", "SZ")
    ```
    """

    def __new__(cls, *args, **kwargs):
        if cls is AutoSpecModel and _functional_arguments(args, kwargs):
            from tf_autospec.functional import FunctionalAutoSpecModel  # it subclasses this class

            return super().__new__(FunctionalAutoSpecModel)
        # keras.Model.__new__ drops the constructor's arguments, which keras.Layer.__new__
        # records for get_config: a subclass's options (and the user's own arguments) are
        # then saved with the model when they are plain values.
        instance = keras.layers.Layer.__new__(cls, *args, **kwargs)
        instance._autospec_given_options = tuple(k for k in kwargs if k in serialization.OPTIONS)
        return instance

    @keras_default
    def get_config(self):
        """Keras's config of a subclass, plus the AutoSpec options its constructor was
        given (a subclass that sets ``groups`` itself does not get them passed back).

        Keras builds the config of a subclass that does not override ``get_config`` from
        its constructor's arguments; one that overrides it (``config =
        super().get_config(); config.update(...)``, as Keras's guide shows) gets the
        options here.
        """
        config = super().get_config()
        options = serialization.options_config(self)
        config.update({k: options[k] for k in getattr(self, "_autospec_given_options", ()) if k not in config})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """The model of a config: the functional and the wrapped forms are recognised
        (``AutoSpecModel.from_config(model.get_config())`` works for every form)."""
        if cls is AutoSpecModel:
            from tf_autospec.functional import FunctionalAutoSpecModel
            from tf_autospec.wrapped import WrappedModel

            if "autospec" in config:
                return FunctionalAutoSpecModel.from_config(config, custom_objects)
            if "model" in config:
                return WrappedModel.from_config(config, custom_objects)
        return super().from_config(config, custom_objects)

    def __init__(
        self, *args, groups=None, layers=None, kinds=spectra.KINDS, top_k=None,
        randomized=False, every_n_steps=1, null_partitions=0, schedule=None, precision="float64", geometry=True,
        overlap_k=geometry_module.DEFAULT_OVERLAP_K, **kwargs
    ):
        # keras's Functional ignores keyword arguments it does not know: a misspelt option
        # would build a model that silently records with the default.
        unknown = sorted(set(kwargs) - set(serialization.KERAS_ARGUMENTS)) if isinstance(self, Functional) else []
        if unknown:
            raise serialization.unknown_options(unknown)
        try:
            super().__init__(*args, **kwargs)
        except ValueError as error:
            if "Unrecognized keyword arguments" not in str(error):
                raise
            raise serialization.unknown_options(sorted(set(kwargs) - set(serialization.KERAS_ARGUMENTS))) from None
        self.groups = groups_module.validate_group_names(groups)
        if isinstance(self, Functional):
            groups_module.refuse_group_input(self)
        if layers is not None and isinstance(layers, str):
            layers = [layers]
        self.autospec_layers = None if layers is None else tuple(layers)
        self.autospec_kinds = tracking.check_kinds(kinds)
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be None or a positive integer; received {top_k!r}.")
        self.autospec_top_k = None if top_k is None else int(top_k)
        if randomized and top_k is None:
            raise ValueError(
                "randomized=True computes only the largest singular values: give top_k too, "
                "e.g. AutoSpecModel(..., top_k=10, randomized=True)."
            )
        self.autospec_randomized = bool(randomized)
        self.autospec_schedule = schedules.get(schedule, every_n_steps)
        if precision not in spectra.PRECISIONS:
            raise ValueError(f"precision must be one of {list(spectra.PRECISIONS)}; received {precision!r}.")
        self.autospec_precision = precision
        self.autospec_every_n_steps = int(every_n_steps)
        if isinstance(null_partitions, bool) or int(null_partitions) != null_partitions or null_partitions < 0:
            raise ValueError(
                f"null_partitions must be a whole number >= 0; received {null_partitions!r}."
            )
        self.autospec_null_partitions = int(null_partitions)
        self.autospec_geometry = geometry_module.check_geometry(geometry)
        self.autospec_overlap_k = geometry_module.check_overlap_k(overlap_k)
        self._spectra_state = None
        self.input_kernels = frozenset()
        self.null_partitions_origin = None
        self.target_is_group = None
        self._batch_size_hint = None
        self._exchanges = {}

    # ----------------------------------------------------------------- inputs

    def _layer_tree_root(self):
        """The model whose layers name the kernel paths (`layer_paths`)."""
        return self

    def _expects_dict_inputs(self):
        return isinstance(getattr(self, "_inputs_struct", None), dict)

    def _model_inputs(self, x):
        """``x`` without its group entry; a lone remaining entry is the input itself."""
        if not isinstance(x, dict) or groups_module.GROUP_KEY not in x:
            return x
        rest = {k: v for k, v in x.items() if k != groups_module.GROUP_KEY}
        if len(rest) == 1 and not self._expects_dict_inputs():
            return next(iter(rest.values()))
        return rest

    def __call__(self, *args, **kwargs):
        if args:
            args = (self._model_inputs(args[0]),) + args[1:]
        return super().__call__(*args, **kwargs)

    @property
    def _recorded_groups(self):
        """Groups whose spectra are computed: the real ones and every null partition's."""
        return len(self.groups) * (1 + self.autospec_null_partitions)

    def _group_labels(self, x, training=True):
        """The step's labels as int32 indices, checked; in training with the model's null
        partitions as columns."""
        if not isinstance(x, dict) or groups_module.GROUP_KEY not in x:
            raise groups_module.missing_labels_error(x, self.groups)
        labels = groups_module.labels_to_indices_tensor(
            x[groups_module.GROUP_KEY], self.groups, check=not self.jit_compile
        )
        columns = 1 if labels.shape.rank == 1 else labels.shape[1]
        if training and columns != 1 + self.autospec_null_partitions:
            raise groups_module.partitions_error(columns, self.autospec_null_partitions)
        return labels

    def _indices(self, labels, draw=True):
        """Labels (NumPy side) as int32 indices, with this model's null partitions: drawn
        here from one label per sample when ``draw`` (the arrays of one fit hold every
        sample), else they must be given."""
        indices = groups_module.labels_to_indices(labels, self.groups)
        partitions = self.autospec_null_partitions
        if partitions and indices.ndim == 1 and draw:
            return groups_module.null_partitions(indices, partitions)
        columns = 1 if indices.ndim == 1 else indices.shape[1]
        if columns != 1 + partitions:
            raise groups_module.partitions_error(columns, partitions)
        return indices

    def _note_training_labels(self, x, y, given_partitions):
        """Remembers, for the run file, where this fit's null partitions come from and
        whether the groups follow the target (`tf_autospec.stats` uses both)."""
        labels = x.get(groups_module.GROUP_KEY) if isinstance(x, dict) else None
        arrays = isinstance(labels, np.ndarray)
        columns = labels.reshape(len(labels), -1) if arrays else None
        if not self.autospec_null_partitions:
            self.null_partitions_origin = None
        elif not arrays or given_partitions:  # with the labels: nothing to check them against
            self.null_partitions_origin = {"given": True}
        else:
            fingerprint = hashlib.sha1(np.ascontiguousarray(columns, dtype=np.int32).tobytes()).hexdigest()
            self.null_partitions_origin = {"given": False, "samples": len(labels), "fingerprint": fingerprint}
        if not arrays:
            self.target_is_group = None
            return
        self.target_is_group = None if y is None or isinstance(y, (dict, list, tuple)) else \
            groups_module.follows_the_target(y, columns[:, 0])

    def _attach_groups(self, x, labels):
        if isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)) or inputs.is_iterator(x):
            raise ValueError(
                "`groups=` works with array inputs. For a tf.data.Dataset, a PyDataset or a "
                "generator, yield the inputs as a dict with a 'group' entry instead: "
                "({'x': x, 'group': labels}, y)."
            )
        if isinstance(x, dict) and groups_module.GROUP_KEY in x:
            raise ValueError(
                "Group labels were given twice: as `groups=` and as the 'group' entry of x. "
                "Give one of them."
            )
        indices = self._indices(labels)
        first = next(iter(tree.flatten(x)))
        if len(indices) != len(first):
            raise ValueError(
                f"groups has {len(indices)} labels but x has {len(first)} samples; "
                "give one group label per sample."
            )
        if isinstance(x, dict):
            return {**x, groups_module.GROUP_KEY: indices}
        return {"x": x, groups_module.GROUP_KEY: indices}

    def _with_indices(self, x, groups=None, required=False, draw=True):
        """The inputs of any Keras entry point with their group labels as int32 indices.

        Labels given as ``groups=`` or as the ``"group"`` entry of arrays are converted here
        (every label form `groups.labels_to_indices` reads); a `keras.utils.PyDataset` or a
        generator has each batch converted as it is drawn; a `tf.data.Dataset` is converted
        inside the step (`groups.labels_to_indices_tensor`). A dict whose group entry is
        under another key (``"groups"``, ``"grp"``...) is refused with the key to use.

        Args:
            x: the inputs, as given to ``fit``, ``evaluate``, ``predict`` or ``*_on_batch``.
            groups: labels given as an argument, or ``None``.
            required: whether labels must be present (training).
            draw: whether null partitions may be drawn from these labels (not from one
                batch of a PyDataset or generator: a subject's label in a partition
                would change from batch to batch).
        """
        if groups is not None:
            return self._attach_groups(x, groups)
        if isinstance(x, keras.utils.PyDataset):
            return inputs.LabelledPyDataset(x, functools.partial(self._batch_with_indices, required=required))
        if inputs.is_iterator(x):
            return inputs.converted_batches(x, functools.partial(self._batch_with_indices, required=required))
        if isinstance(x, tf.data.Dataset):
            groups_module.check_group_entry(x.element_spec[0] if isinstance(x.element_spec, tuple)
                                            else x.element_spec, self.groups, required, self._input_names())
            return x
        groups_module.check_group_entry(x, self.groups, required, self._input_names())
        if isinstance(x, dict) and groups_module.GROUP_KEY in x:
            return {**x, groups_module.GROUP_KEY: self._indices(x[groups_module.GROUP_KEY], draw=draw)}
        return x

    def _input_names(self):
        return groups_module.input_names(self)

    def _batch_with_indices(self, batch, required):
        """One batch ``x`` or ``(x, y[, sample_weight])`` of a PyDataset or generator, its
        labels converted (`_with_indices`)."""
        if isinstance(batch, tuple):
            return (self._with_indices(batch[0], required=required, draw=False),) + batch[1:]
        return self._with_indices(batch, required=required, draw=False)

    def fit(self, x=None, y=None, *args, groups=None, validation_data=None, **kwargs):
        """`keras.Model.fit`, plus ``groups``: one group label per sample of ``x``.

        Labels may instead come as a ``"group"`` entry of a dict ``x`` (the form `tf.data`
        pipelines, PyDatasets and generators use). ``validation_data`` may carry the same
        entry. Labels are indices ``0..G-1`` (``-1`` = in no group) or the group names.
        """
        given = groups if groups is not None else x.get(groups_module.GROUP_KEY) if isinstance(x, dict) else None
        given_partitions = np.ndim(given) == 2 and np.shape(given)[1] > 1
        x = self._with_indices(x, groups, required=True)
        self._note_training_labels(x, y, given_partitions)
        x, first_batch = inputs.peeked(x)
        if validation_data is not None:
            validation_data = self._validation_with_indices(validation_data)
        self._build_from_sample(first_batch if first_batch is not None else x)
        self._batch_size_hint = inputs.batch_size(
            x, kwargs.get("batch_size", args[0] if args else None), self.distribute_strategy.num_replicas_in_sync
        )
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def _validation_with_indices(self, validation_data):
        if isinstance(validation_data, (tuple, list)):
            return (self._with_indices(validation_data[0]),) + tuple(validation_data[1:])
        return self._with_indices(validation_data)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False, groups=None, **kwargs):
        """`keras.Model.evaluate`, plus the loss and every compiled metric per group when the
        data carry group labels (``groups=`` or a ``"group"`` entry, read as in ``fit``).

        Returns:
            With ``return_dict=True``, Keras's results and, per declared group,
            ``"<name>/<group>"`` (``"loss/HC"``, ``"accuracy/SZ"``): `keras.Model.evaluate`
            on that group's samples alone, NaN for a group absent from the data. As a list,
            Keras's results followed by those, in the dict's order.

        Example:
            >>> model.evaluate(x, y, groups=labels, return_dict=True)
            {'accuracy': 0.81, 'loss': 0.43, 'loss/HC': 0.39, 'accuracy/HC': 0.84, ...}
        """
        x = self._with_indices(x, groups)
        by_group = None
        # Inside fit, Keras evaluates the validation data through a cached iterator.
        if not kwargs.get("_use_cached_eval_dataset"):
            if isinstance(x, keras.utils.PyDataset) or inputs.is_iterator(x):
                x, first = inputs.peeked(x) if inputs.is_iterator(x) else (x, inputs.first_inputs(x))
                if evaluation.has_labels(first):
                    # Only the batches Keras would evaluate (the data may be infinite); the
                    # arrays hold just those, so `steps` no longer applies.
                    x, y, sample_weight, batch_size = evaluation.in_memory(x, y, sample_weight, steps)
                    steps = None
            if evaluation.has_labels(x):
                by_group = evaluation.per_group(self, x, y, sample_weight, batch_size, steps)
        results = super().evaluate(x, y, batch_size=batch_size, verbose=verbose, sample_weight=sample_weight,
                                   steps=steps, callbacks=callbacks, return_dict=return_dict, **kwargs)
        if by_group is None:
            return results
        groups_results = evaluation.keyed(by_group, list(self.get_metrics_result()))
        if return_dict:
            return {**results, **groups_results}
        return (results if isinstance(results, list) else [results]) + list(groups_results.values())

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`; a ``"group"`` entry of the inputs is read as in ``fit``
        and does not change the predictions."""
        return super().predict(self._with_indices(x), *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`, recording the step's spectra (labels as in ``fit``;
        with null partitions, the labels carry them: one batch is not the whole dataset)."""
        x = self._with_indices(x, required=True, draw=False)
        self._build_from_sample(x)
        return super().train_on_batch(x, y, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        return super().test_on_batch(self._with_indices(x), y, *args, **kwargs)

    def predict_on_batch(self, x):
        return super().predict_on_batch(self._with_indices(x))

    def _build_from_sample(self, x):
        """Builds every layer on one sample: the tracked kernels must exist before tracing."""
        if all(layer.built for layer in self._flatten_layers()):
            return
        if isinstance(x, tf.data.Dataset):
            x = next(iter(x.take(1)))[0]
            sample = tree.map_structure(lambda v: v[:1], x)
        elif isinstance(x, keras.utils.PyDataset):
            batch = x[0]
            sample = tree.map_structure(lambda v: v[:1], batch[0] if isinstance(batch, tuple) else batch)
        else:
            sample = tree.map_structure(lambda v: v[:1], x)
        with self.distribute_strategy.scope():
            self(sample, training=False)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras reduces a whole distributed batch with one `strategy.reduce`, which
        # MultiWorkerMirroredStrategy refuses for a nested batch. The build needs only the
        # batch's structure, shapes and dtypes: one replica's share has them.
        if iterator is not None and self._distribute_strategy is not None:
            for *_, batches in iterator:  # (step, it) in Keras 3.8, (first, last, it) later
                data_batch = tree.map_structure(
                    lambda v: self._distribute_strategy.experimental_local_results(v)[0], next(batches)
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # --------------------------------------------------------------- training

    def kernel_path(self, variable):
        """The path under which a kernel variable's spectra are recorded (its place in the
        model, see `tf_autospec.layer_paths`).

        Example:
            >>> model.kernel_path(model.get_layer("dense_1").kernel)
            'dense_1/kernel'
        """
        return layer_paths.LayerPaths(self._layer_tree_root()).variable_path(variable)

    @property
    def tracked_kernels(self):
        """The `tracking.TrackedKernel`s recorded (known once training has started)."""
        return [] if self._spectra_state is None else list(self._spectra_state.kernels)

    def make_train_function(self, force=False):
        """The recording step (`train_step`), or, unless every step is recorded, a
        `schedules.ScheduledSteps` that runs it at the scheduled steps and `keras.Model`'s
        own step at the others."""
        if self.steps_per_execution != 1:
            raise ValueError(
                "AutoSpecModel records spectra after every step, which needs "
                f"steps_per_execution=1 in compile() (got {self.steps_per_execution})."
            )
        if self.jit_compile and not _xla_allowed():
            warnings.warn(
                "jit_compile=True is turned off for AutoSpecModel's training step on "
                "CPU: XLA's CPU eigen-solvers take minutes on matrices this size. "
                "On a GPU the step is compiled with XLA.",
                tracking.AutoSpecWarning,
                stacklevel=tracking.user_stacklevel(),
            )
            self.jit_compile = False
        self._ensure_spectra_state()
        if force or self.train_function is None:
            self._exchanges = {}  # filled again while the recording step is traced
            recording = self._make_function(self.train_step)
            if self.autospec_schedule == schedules.Every(1):
                self.train_function = recording
            else:
                self.train_function = schedules.ScheduledSteps(
                    self, recording, self._make_function(self._unrecorded_train_step)
                )
        return self.train_function

    def _ensure_spectra_state(self):
        """Finds the tracked kernels and creates the buffer of the last step's spectra,
        once (the model's layers must be built)."""
        if self._spectra_state is None:
            kernels = tracking.find_tracked_kernels(
                self, self._layer_tree_root(), self.autospec_layers, self.autospec_kinds, self.autospec_top_k
            )
            with self.distribute_strategy.scope():
                self._spectra_state = LastStep(
                    kernels, len(self.groups), self.autospec_null_partitions, self.autospec_geometry
                )

    @contextlib.contextmanager
    def _recording(self, tape):
        recording = Recording(tape)
        undo = []
        try:
            layers = {id(k.layer): k.layer for k in self._spectra_state.kernels}  # one interception per layer
            for layer in layers.values():
                undo.append(capture_for(layer).intercept(layer, recording))
            yield recording
        finally:
            for restore in undo:
                restore()

    def train_step(self, data):
        """`keras.Model.train_step` with the products and their gradients captured and
        this step's spectra recorded. ``fit`` runs it at the recorded steps (the model's
        schedule) and `keras.Model.train_step` at the others."""
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        labels = self._group_labels(x)
        if self._spectra_state is None:  # a custom loop's first call, before any fit
            self._build_from_sample(x)
            self._ensure_spectra_state()
        with tf.GradientTape() as tape:
            with self._recording(tape) as recording:
                if self._call_has_training_arg:
                    y_pred = self(x, training=True)
                else:
                    y_pred = self(x)
            loss = self._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            self._loss_tracker.update_state(
                unscale_loss_for_distribution(loss),
                sample_weight=tf.shape(next(i for i in tree.flatten(x) if i is not None))[0],
            )
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)

        trainable_weights = self.trainable_weights
        if trainable_weights:
            calls = [recording.calls_of(k.layer, k.name) for k in self._spectra_state.kernels]
            self._note_input_kernels(x, calls)
            products = [product for kernel_calls in calls for _, product in kernel_calls]
            gradients = tape.gradient(loss, trainable_weights + products)
            weight_gradients = gradients[: len(trainable_weights)]
            product_gradients = iter(gradients[len(trainable_weights) :])
            loss_scale = self.optimizer.scale_loss(tf.constant(1.0, loss.dtype))
            softmax_logits = logits.softmax_logits(self.loss, y_pred, products)
            deltas = [
                [
                    logits.unscaled_delta(
                        next(product_gradients), product, loss_scale, any(product is p for p in softmax_logits)
                    )
                    for _, product in kernel_calls
                ]
                for kernel_calls in calls
            ]
            sample_losses = group_loss.per_sample(self, y, y_pred, sample_weight)
            step = tf.identity(self.optimizer.iterations)
            self.optimizer.apply_gradients(zip(weight_gradients, trainable_weights))
            self._record(step, calls, deltas, labels, sample_losses)
        else:
            warnings.warn("The model does not have any trainable weights.")
        return self._reducible(self.compute_metrics(x, y, y_pred, sample_weight=sample_weight))

    def _note_input_kernels(self, x, calls):
        """Remembers, while the step is traced, the kernels whose layer reads the model's
        input itself: their ``act`` spectrum is the data, not how the model trains
        (`tf_autospec.stats` tests it in a family of its own)."""
        model_inputs = tree.flatten(self._model_inputs(x))
        self.input_kernels = frozenset(
            kernel.path for kernel, kernel_calls in zip(self._spectra_state.kernels, calls)
            if any(logits.reshaped_from(inputs, model_inputs) for inputs, _ in kernel_calls)
        )

    def _unrecorded_train_step(self, data):
        x, _, _ = unpack_x_y_sample_weight(data)
        self._group_labels(x)  # bad labels raise at every step, recorded or not
        logs = super().train_step(data)
        # Written after the step's work, so that a call that gets no batch (Keras's last
        # call of an epoch of unknown length) leaves the flag as the last real step set it.
        with tf.control_dependencies(tree.flatten(logs)):
            self._spectra_state.recorded.assign(False)
        return self._reducible(logs)

    def test_step(self, data):
        x, _, _ = unpack_x_y_sample_weight(data)
        if isinstance(x, dict) and groups_module.GROUP_KEY in x:
            self._group_labels(x, training=False)  # bad labels are refused in evaluate as in fit
        return self._reducible(super().test_step(data))

    def _reducible(self, logs):
        """Step outputs that Keras can reduce across workers.

        Under a multi-worker `MultiWorkerMirroredStrategy`, Keras 3 reduces each output
        with ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars
        (tensorflow/tensorflow#72388). With a leading axis of one, that reduction is the
        mean over replicas and the value keeps its shape.
        """
        strategy = self.distribute_strategy
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
            strategy.extended._in_multi_worker_mode()
        ):
            return tree.map_structure(lambda value: value[None], logs)
        return logs

    def _record(self, step, calls, deltas, labels, sample_losses):
        state = self._spectra_state
        kinds = self._kinds_per_kernel(calls)
        replicas = distributed.replica_context()
        if replicas is None:
            grouping = spectra.SampleGrouping(labels, len(self.groups), self.jit_compile)
            computations = [
                functools.partial(self._kernel_spectra, *arguments, grouping)
                for arguments in zip(state.kernels, calls, deltas)
            ]
        else:
            exchange = distributed.GlobalBatch(
                replicas, labels, len(self.groups), self._batch_size_hint, self.jit_compile
            )
            grouping = exchange.grouping
            sample_losses = group_loss.gathered(sample_losses, exchange.gather)
            computations = [
                self._global_kernel_spectra(exchange, *arguments)
                for arguments in zip(state.kernels, calls, deltas, kinds)
            ]
        # The eigen-problems of all kernels are solved together: one call per matrix size.
        outputs = solvers.run([compute(kernel_kinds) for compute, kernel_kinds in zip(computations, kinds)])
        results, finite, delta_spectra, geometry_pieces = {}, [], {}, {}
        for kernel, kernel_calls, kernel_kinds, (kernel_results, kernel_finite) in zip(state.kernels, calls, kinds,
                                                                                     outputs):
            if "geometry" in kernel_results:
                geometry_pieces[kernel.path] = kernel_results.pop("geometry")
            if "delta" in kernel.widths and "delta" not in kernel_kinds:
                shared = delta_spectra[_products_key(kernel, kernel_calls)]
                kernel_results["delta"] = tf.where(kernel_finite[:, None], shared, float("nan"))
            elif "delta" in kernel_kinds:
                delta_spectra[_products_key(kernel, kernel_calls)] = kernel_results["delta"]
            finite.append(tf.reduce_all(kernel_finite))
            for kind, values in kernel_results.items():
                results[(kernel.path, kind)] = values
        with tf.name_scope("geometry"):
            measured = geometry_module.measures(self.autospec_geometry, self._geometry_layout,
                                                list(geometry_pieces.values()))
        for path, values in zip(geometry_pieces, measured):
            results.update({(path, name): value for name, value in values.items()})
        losses = group_loss.group_means(sample_losses, grouping.one_hot, len(self.groups))
        state.assign(step, grouping.counts, losses, results, finite)

    def _kinds_per_kernel(self, calls):
        """The kinds to compute per kernel: kernels fed by the same products (an LSTM's
        two kernels) share σ(Δ), computed for the first of them."""
        kinds, seen = [], set()
        for kernel, kernel_calls in zip(self._spectra_state.kernels, calls):
            key = _products_key(kernel, kernel_calls) if kernel_calls else None
            shares_delta = bool(kernel_calls) and key in seen
            seen.add(key)
            kinds.append(tuple(k for k in self.autospec_kinds if not (k == "delta" and shares_delta)))
        return kinds

    def _global_kernel_spectra(self, exchange, kernel, kernel_calls, kernel_deltas, kinds):
        """Exchanges what this replica holds of one kernel's factors (see `distributed`) and
        returns the function that computes the global batch's spectra from it."""
        if not kernel_calls:
            return functools.partial(self._kernel_spectra, kernel, kernel_calls, kernel_deltas, exchange.grouping)
        spec = spectra.row_sums_spec(
            kernel.capture.input_factor_type, kernel.fan_in, kernel.fan_out, kinds, self._recorded_groups,
            bool(self.autospec_geometry),
        )
        gathered_size = distributed.gathered_values(kernel_calls, kernel_deltas, exchange.global_batch)
        summed_size = distributed.summed_values(spec)
        if gathered_size is not None and gathered_size < summed_size:
            self._exchanges[kernel.path] = {"exchange": "rows", "values": gathered_size}
            inputs = exchange.gather([inputs for inputs, _ in kernel_calls])
            all_calls = [(gathered, product) for gathered, (_, product) in zip(inputs, kernel_calls)]
            all_deltas = exchange.gather_once(_products_key(kernel, kernel_calls), kernel_deltas)
            return functools.partial(self._kernel_spectra, kernel, all_calls, all_deltas, exchange.grouping)
        self._exchanges[kernel.path] = {"exchange": "sums", "values": summed_size}

        a, delta, _, _ = self._factors(kernel, kernel_calls, kernel_deltas, exchange.local_grouping)
        geometry = self._geometry_request(kernel, kernel_calls, kernel_deltas, exchange.local_grouping)
        summed = exchange.all_reduce(spectra.row_sums(a, delta, kinds, geometry))
        rows_per_sample = _rows_per_sample(kernel, kernel_deltas)
        return lambda _: spectra.spectra_from_row_sums(
            summed, kernel.capture.input_factor_type, kernel.fan_in, kernel.fan_out, rows_per_sample,
            exchange.grouping.counts, kernel.widths, geometry,
        )

    def _kernel_spectra(self, kernel, kernel_calls, kernel_deltas, grouping, kinds):
        if not kernel_calls:
            groups = self._recorded_groups
            nothing = {k: tf.fill([groups, w], float("nan")) for k, w in kernel.widths.items()}
            partitions = 1 + self.autospec_null_partitions
            for name, shape in geometry_module.recorded_shapes(self.autospec_geometry, len(self.groups)).items():
                nothing[name] = tf.fill([partitions, *shape], float("nan"))
            return nothing, tf.fill([groups], True)
        batch_rows = self._batch_rows(kernel, kernel_calls, kernel_deltas, grouping)
        if batch_rows is None:
            a, delta, rows_per_sample, rows_hint = self._factors(kernel, kernel_calls, kernel_deltas, grouping)
            membership = None
        else:
            a, delta, rows_per_sample, rows_hint, membership = batch_rows
        return spectra.group_spectra_computation(
            a, delta, rows_per_sample, grouping.counts, kinds, kernel.widths, rows_hint, self.autospec_randomized,
            self.autospec_precision, self._geometry_request(kernel, kernel_calls, kernel_deltas, grouping, membership),
        )

    def _geometry_request(self, kernel, kernel_calls, kernel_deltas, grouping, membership=None):
        """The `geometry.Request` of one kernel with ``grouping``'s samples in no group
        (``membership`` where its factors are `spectra.BatchGramRows`), or ``None`` when
        no geometry is recorded."""
        if not self.autospec_geometry:
            return None
        return geometry_module.Request(
            self.autospec_geometry,
            geometry_module.overlap_width(self.autospec_overlap_k, kernel.fan_in, kernel.fan_out),
            self._geometry_layout, grouping.has_unassigned(),
            lambda: self._factors(kernel, kernel_calls, kernel_deltas, grouping.unassigned())[:2],
            membership,
        )

    def _batch_rows(self, kernel, kernel_calls, kernel_deltas, grouping):
        """``(a, delta, rows_per_sample, rows, membership)``: the kernel's factors as
        `spectra.BatchGramRows` (one row-Gram matrix of the whole batch's ``rows``, each
        group's and pair's blocks gathered from it) and which groups each row is in, where
        the kernel is on the rows route (fewer rows in the batch than its smaller fan),
        that is cheaper than the groups' own Gram matrices (`spectra.batch_gram_cheaper`)
        and the rows are known while tracing; else ``None``."""
        rows_per_sample = _rows_per_sample(kernel, kernel_deltas)
        batch = kernel_calls[0][0].shape[0] or self._batch_size_hint
        pairs = len(self._geometry_layout.first) if self.autospec_geometry else 0
        if (grouping.static_shapes or tf.is_tensor(rows_per_sample) or batch is None
                or batch * rows_per_sample >= min(kernel.fan_in, kernel.fan_out)
                or not spectra.batch_gram_cheaper(len(self.groups), grouping.num_groups, pairs)):
            return None
        layer, capture = kernel.layer, kernel.capture
        for tensor in [inputs for inputs, _ in kernel_calls] + list(kernel_deltas):
            self._assert_sample_axis(layer, tensor, grouping)
        a = tf.concat([capture.input_rows(layer, inputs) for inputs, _ in kernel_calls], axis=1)
        delta = tf.concat([capture.output_rows(layer, d) for d in kernel_deltas], axis=1)
        row_index = grouping.row_index(rows_per_sample)
        gram_dtype = spectra.PRECISIONS[self.autospec_precision]
        a = capture.factor(layer, tf.reshape(a, [1, -1, *a.shape[2:]]))
        delta = spectra.DenseRows(tf.reshape(delta, [1, -1, kernel.fan_out]))
        return (spectra.BatchGramRows.of(a, row_index, gram_dtype), spectra.BatchGramRows.of(delta, row_index, gram_dtype),
                rows_per_sample, batch * rows_per_sample, grouping.row_membership(rows_per_sample))

    def _assert_sample_axis(self, layer, tensor, grouping):
        if not self.jit_compile:
            tf.debugging.assert_equal(
                tf.shape(tensor)[0], tf.shape(grouping.one_hot)[0],
                message=f"Layer '{layer.name}' was called on a batch axis other than "
                "the samples'; AutoSpec cannot map its rows to groups. Exclude it "
                "with layers=[...].",
            )

    @property
    def _geometry_layout(self):
        return geometry_module.Layout(len(self.groups), 1 + self.autospec_null_partitions)

    def _factors(self, kernel, kernel_calls, kernel_deltas, grouping):
        """The kernel's factors laid out per group, the rows per sample, and a bound of the
        rows per group when it is known while tracing (or ``None``)."""
        groups = grouping.num_groups
        layer, capture = kernel.layer, kernel.capture

        def grouped_rows(tensors, rows, fill):
            # Group whole samples first: far fewer values to move than their rows.
            out = []
            for tensor in tensors:
                self._assert_sample_axis(layer, tensor, grouping)
                laid_out = grouping.apply(tensor, fill)
                # Static per-sample shapes keep the rows per sample known while tracing, so
                # that each kernel's route is chosen then (not by a tf.cond at every step).
                per_sample = tensor.shape[1:]
                whole_samples = [-1, *per_sample] if per_sample.is_fully_defined() else tf.concat(
                    [[-1], tf.shape(tensor)[1:]], 0)
                out.append(rows(layer, tf.reshape(laid_out, whole_samples)))
            return tf.concat(out, axis=1)

        input_rows = grouped_rows([i for i, _ in kernel_calls], capture.input_rows, capture.fill_value())
        delta_rows = grouped_rows(kernel_deltas, capture.output_rows, 0)
        a = capture.factor(layer, tf.reshape(input_rows, [groups, -1, *input_rows.shape[2:]]))
        delta = spectra.DenseRows(tf.reshape(delta_rows, [groups, -1, kernel.fan_out]))
        rows_per_sample = spectra.dim(delta_rows, 1)
        batch = kernel_calls[0][0].shape[0] or self._batch_size_hint
        rows_hint = None
        if batch is not None and not tf.is_tensor(rows_per_sample):
            rows_hint = batch * rows_per_sample  # rows of the whole batch: a bound of R
        return a, delta, rows_per_sample, rows_hint

    # ---------------------------------------------------------------- results

    @property
    def distributed_exchange(self):
        """What the replicas exchange per recorded step for each kernel under a
        `tf.distribute` strategy with several replicas (empty otherwise; known once
        training has started).

        Returns:
            dict kernel path -> ``{"exchange": "rows" | "sums", "values": n}``: the rows
            of every sample are all-gathered, or per-group sums over rows are
            all-reduced, whichever moves fewer values (``n`` float32-sized values per
            recorded step in all; see `tf_autospec.distributed`). One int32 group label per
            sample is all-gathered besides.
        """
        return dict(self._exchanges)

    @property
    def last_spectra(self):
        """`StepSpectra` of the last training step, or ``None`` if it was not recorded."""
        if self._spectra_state is None:
            return None
        return self._spectra_state.read(self.groups)


def _rows_per_sample(kernel, kernel_deltas):
    """Rows each sample contributes to the kernel's factors (summed over its calls)."""
    return sum(spectra.dim(kernel.capture.output_rows(kernel.layer, delta), 1) for delta in kernel_deltas)


def _products_key(kernel, kernel_calls):
    return tuple(id(product) for _, product in kernel_calls), kernel.widths.get("delta")
