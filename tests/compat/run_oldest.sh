#!/usr/bin/env bash
# Run a representative test subset under the OLDEST supported TensorFlow/Keras pair.
#
# What it does:
#   1. creates a fresh virtual environment (a temporary folder, removed at the end, or
#      the folder in $COMPAT_VENV, which is kept and recreated on every run);
#   2. installs this package with its test extra, `pip install -e ".[test]"`, with
#      tensorflow==2.16.2 and keras==3.8.0 pinned through a pip constraints file, so
#      that nothing can upgrade them (pip picks the rest, e.g. numpy<2 for TF 2.16);
#   3. prints the installed TensorFlow, Keras and NumPy versions;
#   4. runs pytest on tests/test_model_api.py tests/test_labels.py tests/test_resume.py
#      tests/test_store.py tests/test_layers_exact.py (and tests/test_keras_citizenship.py
#      where it exists) with `-p no:cacheprovider -n 2`, and exits with pytest's code.
#
# Usage (from anywhere; the repository is found from this file's place):
#   bash tests/compat/run_oldest.sh                 # the default subset
#   bash tests/compat/run_oldest.sh -n 0 -x         # extra arguments go to pytest
#   COMPAT_VENV=/tmp/oldest bash tests/compat/run_oldest.sh   # keep the venv for reuse
# Environment: PYTHON (interpreter for the venv, default python3; pyproject needs >=3.10),
#   TF_VERSION / KERAS_VERSION (default 2.16.2 / 3.8.0), COMPAT_VENV (see above),
#   COMPAT_TESTS (space-separated test paths replacing the default subset).
#
# Time: the install downloads about 600 MB (TensorFlow and friends: 1 min here, a few
#   minutes on a slower link; the venv takes 2.6 GB, removed at the end unless
#   COMPAT_VENV is set); the default subset then takes about 5 min on a 2-core VM
#   (6 min 13 s in all on 2026-11-30). Results: docs/api.md, "Supported versions".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
TF_VERSION="${TF_VERSION:-2.16.2}"
KERAS_VERSION="${KERAS_VERSION:-3.8.0}"

WORK="$(mktemp -d -t tf_autospec_oldest.XXXXXX)"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

if [[ -n "${COMPAT_VENV:-}" ]]; then
    VENV="$COMPAT_VENV"
    # Recreate only a folder that is absent, empty or a venv: never wipe anything else.
    if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" && -n "$(ls -A "$VENV" 2>/dev/null)" ]]; then
        echo "COMPAT_VENV=$VENV exists and is not a virtual environment; refusing to clear it" >&2
        exit 2
    fi
else
    VENV="$WORK/venv"
fi

echo "== [$(date +%T)] fresh venv in $VENV ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip

CONSTRAINTS="$WORK/constraints.txt"
cat > "$CONSTRAINTS" <<EOF
tensorflow==$TF_VERSION
keras==$KERAS_VERSION
EOF

echo "== [$(date +%T)] pip install -e \".[test]\" -c constraints (tensorflow==$TF_VERSION, keras==$KERAS_VERSION)"
"$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS" -e "$ROOT[test]"

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
echo "== [$(date +%T)] installed"
"$VENV/bin/python" - <<'EOF'
import sys
import numpy, keras, tensorflow as tf
print(f"python {sys.version.split()[0]}, tensorflow {tf.__version__}, keras {keras.__version__}, numpy {numpy.__version__}")
EOF

cd "$ROOT"
if [[ -n "${COMPAT_TESTS:-}" ]]; then
    read -r -a TESTS <<< "$COMPAT_TESTS"
else
    TESTS=(tests/test_model_api.py tests/test_labels.py tests/test_resume.py
           tests/test_store.py tests/test_layers_exact.py)
    [[ -f tests/test_keras_citizenship.py ]] && TESTS+=(tests/test_keras_citizenship.py)
fi

echo "== [$(date +%T)] pytest ${TESTS[*]} -p no:cacheprovider -n 2 $*"
start=$SECONDS
set +e
"$VENV/bin/python" -m pytest "${TESTS[@]}" -p no:cacheprovider -n 2 "$@"
rc=$?
set -e
echo "== [$(date +%T)] pytest exit code $rc after $((SECONDS - start)) s (tensorflow==$TF_VERSION, keras==$KERAS_VERSION)"
exit $rc
