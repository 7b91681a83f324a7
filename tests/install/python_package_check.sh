#!/usr/bin/env bash
# install.python_package: `pip install <checkout>` into a fresh virtual environment
# (pyproject.toml: scikit-build-core drives this checkout's CMake build of libspattn),
# then, outside the checkout and without PYTHONPATH or SPATTN_LIB, `import spattn` must
# load the library installed beside the module and answer through the C ABI.
#
#   tests/install/python_package_check.sh SOURCE_DIR WORK_DIR [PYTHON]
#
# Exits 77 (ctest: skipped) when a virtual environment cannot be made or PyPI (for
# scikit-build-core, the build backend) cannot be reached.
set -euo pipefail
src=$1
work=$2
python=${3:-python3}
rm -rf "$work"
mkdir -p "$work"
if ! "$python" -m venv "$work/venv" >"$work/venv.log" 2>&1; then
  echo "SKIP: $python -m venv failed: $(tail -1 "$work/venv.log")"
  exit 77
fi
py=$work/venv/bin/python
if ! "$py" -m pip download -q --no-deps -d "$work/probe" "scikit-build-core>=0.10" >"$work/probe.log" 2>&1; then
  echo "SKIP: PyPI is not reachable for the build backend scikit-build-core: $(tail -1 "$work/probe.log")"
  exit 77
fi
if command -v ccache >/dev/null; then export CMAKE_ARGS="-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"; fi
start=$(date +%s)
if ! "$py" -m pip install -q --config-settings=build-dir="$work/build" "$src" >"$work/pip.log" 2>&1; then
  tail -40 "$work/pip.log"
  echo "FAIL: pip install $src"
  exit 1
fi
echo "pip install: $(( $(date +%s) - start )) s"
cd "$work"
env -u PYTHONPATH -u SPATTN_LIB "$py" - "$work/venv" <<'PY'
import os
import sys

import spattn

venv = os.path.realpath(sys.argv[1])
module = os.path.realpath(spattn.__file__)
library = os.path.realpath(spattn._lib._name)
assert module.startswith(venv + os.sep), f"spattn imported from {module}, not from the virtual environment"
assert library == os.path.join(os.path.dirname(module), "libspattn.so"), f"library {library} is not the installed one"
version = spattn.version()
assert version, "empty version"
stats = spattn.pattern_stats({"type": "local_window", "window": 256}, 4096)
assert 0.0 < stats["density"] < 1.0, stats
print(f"import spattn {version} from {module}; density of window 256 at 4096: {stats['density']:.4f}")
PY
