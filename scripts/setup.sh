# Sourced by scripts/demo and scripts/test: makes sure uv and the project's locked venv exist.
# Idempotent, so every entry point can call it; needs only Python >= 3.10 and PyPI.

if ! command -v uv >/dev/null 2>&1; then
    # A private venv for uv itself, so nothing is installed into the system Python.
    if [ ! -x .tools/bin/uv ]; then
        echo "setup: installing uv into .tools/" >&2
        python3 -m venv .tools
        .tools/bin/python -m pip install --quiet uv
    fi
    PATH="$PWD/.tools/bin:$PATH"
    export PATH
fi
# Use a Python already on the machine rather than downloading one (only PyPI is reachable).
export UV_PYTHON_DOWNLOADS=never
uv sync --frozen --quiet
