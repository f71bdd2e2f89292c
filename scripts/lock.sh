#!/usr/bin/env bash
# Write requirements/lock.txt anew: the project with every extra of pyproject.toml, at the newest versions it
# allows, installed into a throwaway venv (the old lock not consulted), and frozen.
#   make lock                                              # what to run: PYTHON and the torch pins from the Makefile
#   scripts/lock.sh python3.11 "torch==2.14.1" "torchvision==0.29.1"
# Then `make test` on the new lock, and commit it if the suite passes (docs/dependencies.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$1
shift  # the rest: pins for packages that must not move (torch, torchvision)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet "$@" -e .
# The extras as the installed metadata lists them: a new extra is in the next lock without editing this script.
extras=$("$py" -c 'from importlib.metadata import metadata; print(",".join(metadata("mnist-lightning").get_all("Provides-Extra") or []))')
"$py" -m pip install --quiet "$@" -e ".[$extras]"
"$py" -m pip check
{
    echo "# The versions the suite passed with, as pip constraints for \`make venv\`. Regenerate with \`make lock\`"
    echo "# (scripts/lock.sh, docs/dependencies.md), never by hand. Extras: $extras."
    echo "# Resolved with $("$py" -c 'import platform; print("Python", platform.python_version(), "on", platform.system(), platform.machine())')."
    "$py" -m pip freeze --exclude-editable
} > requirements/lock.txt.new
mv requirements/lock.txt.new requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages); now run make test on it"
