#!/usr/bin/env bash
# Runs once when the devcontainer is created (devcontainer.json postCreateCommand):
# uv, the locked environment with every extra, .env from .env.example, git hooks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"

# The checkout is bind-mounted and may be owned by another uid than the container's root.
git config --global --get-all safe.directory | grep -qxF "$repo" ||
  git config --global --add safe.directory "$repo"

if ! command -v uv >/dev/null 2>&1; then
  echo "installing uv ..."
  python3 -m pip install --quiet --root-user-action=ignore uv
fi

uv sync --frozen --all-extras

if [ ! -f .env ]; then
  cp .env.example .env
  echo "created .env from .env.example (RustFS, PostgreSQL and MLflow of this devcontainer)"
fi

# Interactive shells load .env, so `uv run imageml run` talks to RustFS and PostgreSQL.
line="[ -f '$repo/.env' ] && set -a && . '$repo/.env' && set +a"
touch "$HOME/.bashrc"
grep -qxF "$line" "$HOME/.bashrc" || echo "$line" >>"$HOME/.bashrc"

uv run --frozen lefthook install

echo "ready: ./scripts/test runs the suite; ./imageml demo runs every stage on embedded services"
