# Sourced by ./imageml and scripts/test: make sure uv exists and the locked venv is in sync.
# uv comes from PyPI when missing; every dependency comes from uv.lock (`--frozen`).
if ! command -v uv >/dev/null 2>&1; then
  echo "installing uv (the project's package manager) ..." >&2
  python3 -m pip install --quiet --user uv >&2 || python3 -m pip install --quiet uv >&2
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --project "$project" --frozen --all-extras --quiet >&2
