"""TensorFlow's start-up lines, kept off the user's screen.

``import tensorflow`` and the first device query write C++ (absl) log lines straight to
file descriptor 2, below Python and before ``TF_CPP_MIN_LOG_LEVEL`` is read for all of
them: "All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
"This TensorFlow binary is optimized to use available CPU instructions", and on a
machine without an NVIDIA GPU "Could not find cuda drivers" and "failed call to cuInit".
None of them needs an action. `startup_lines_filtered` catches what is written to
descriptor 2 inside it and writes back every other line once it ends, so Python's
warnings and errors still reach the user; the CUDA lines are kept where an NVIDIA
driver is installed, since there they say that the GPU is not used.
``TF_CPP_MIN_LOG_LEVEL=0`` shows everything.
"""

import contextlib
import os
import re
import sys
import tempfile

_NOISE = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"\S+ \S+ +\d+ port\.cc:\d+\] oneDNN custom operations are on",
    r"\S+ \S+ +\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags",
    r"\S+ \S+ +\d+ \S*(cuda_dnn|cuda_fft|cuda_blas)\.cc:\d+\] Unable to register cu\w+ factory",
)
_NO_GPU_NOISE = (
    r"\S+ \S+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"\S+ \S+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit",
    r"\S+ \S+ +\d+ cuda_executor\.cc:\d+\] .*(no NVIDIA GPU|CUDA_ERROR_NO_DEVICE)",
)


def _has_nvidia_driver():
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def is_startup_noise(line, gpu_machine=None):
    """Whether a line written to descriptor 2 is one of TensorFlow's start-up notices.

    Args:
        line: one line, with or without its newline.
        gpu_machine: whether the machine has an NVIDIA driver (then the CUDA probe's
            lines are kept); default: looked up.

    Returns:
        bool.
    """
    gpu_machine = _has_nvidia_driver() if gpu_machine is None else gpu_machine
    patterns = _NOISE if gpu_machine else _NOISE + _NO_GPU_NOISE
    return any(re.match(pattern, line) for pattern in patterns)


@contextlib.contextmanager
def startup_lines_filtered():
    """Holds back TensorFlow's start-up lines written to descriptor 2 inside the block.

    Everything written to descriptor 2 in the block goes to a temporary file; at its end
    (also when it raises) descriptor 2 is restored and every line that is not start-up
    noise (`is_startup_noise`) is written to ``sys.stderr``. Without a descriptor 2 to
    redirect, or with ``TF_CPP_MIN_LOG_LEVEL=0``, the block runs unchanged.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            gpu_machine = _has_nvidia_driver()
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not is_startup_noise(line, gpu_machine)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
