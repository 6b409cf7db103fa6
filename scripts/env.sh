# Sourced by scripts/run and scripts/test: a project virtualenv with helpdeskd installed in it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Python 3 with venv (and ensurepip) first: minimal Debian images lack python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/env.sh: installing python3 and python3-venv" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  else
    echo "scripts/env.sh: python3 with venv is needed (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
# A .venv left half-made by an earlier failed attempt (no pip) is made again.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  python3 -m venv .venv
fi
# Reinstall only when the project's metadata changed (an editable install follows the code by itself).
stamp=.venv/.helpdeskd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
