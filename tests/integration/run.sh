#!/usr/bin/env bash
# The integration suite in one command, for a person with a bootstrapped machine controller
# (for example `juju bootstrap localhost`) and charmcraft able to build (LXD):
#
#   tests/integration/run.sh [pytest arguments, e.g. -x or -k principal]
#
# Packs rollingops (charmcraft pack in the project root) and the demo principal (assembled with
# the library under build/integration/, see pack_charms.py) for this host's platform, then runs
# `uv run pytest tests/integration` with ROLLINGOPS_CHARM and PRINCIPAL_CHARM pointing at them.
# Packing always happens here, so the run tests the working tree as it is now.
# CHARMCRAFT overrides the charmcraft command; ROLLINGOPS_KEEP_MODEL=1 keeps the model.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v juju >/dev/null; then
  echo "no juju CLI here: install Juju and bootstrap a machine controller first" >&2
  exit 2
fi
# Fails with Juju's own message when no controller is selected, before minutes of packing.
juju show-controller >/dev/null

ROLLINGOPS_CHARM="$(uv run python tests/integration/pack_charms.py rollingops)"
PRINCIPAL_CHARM="$(uv run python tests/integration/pack_charms.py principal)"
export ROLLINGOPS_CHARM PRINCIPAL_CHARM
echo "ROLLINGOPS_CHARM=$ROLLINGOPS_CHARM" >&2
echo "PRINCIPAL_CHARM=$PRINCIPAL_CHARM" >&2

# Live progress: jubilant logs every status change while it waits.
exec uv run pytest tests/integration -v -o log_cli=true --log-cli-level=INFO "$@"
