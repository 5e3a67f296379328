"""When a training step records its spectra."""


class EveryNSteps:
    """The train function of ``fit`` when recording every n-th step: the recording step
    at those, `keras.Model`'s own step (no capture, no exchange) at the others, so that
    the steps in between cost what plain training costs."""

    def __init__(self, model, recording, unrecorded):
        self.model = model
        self.recording = recording
        self.unrecorded = unrecorded

    def __call__(self, data):
        model = self.model
        # The optimizer's step is the one source of truth: it survives checkpoints and
        # moves on with train_on_batch; reading it is one scalar copy.
        due = int(model.optimizer.iterations.numpy()) % model.autospec_every_n_steps == 0
        return (self.recording if due else self.unrecorded)(data)
