#!/usr/bin/env bash
# Browser end-to-end tests: the real livegate binary and Debian's Chromium (driven by
# playwright-core, never a downloaded browser), together inside a private network namespace.
# Builds nothing: run `cargo build` first (or `make test-e2e`, which does).
#
#   tests/e2e/run.sh                              # every scenario
#   tests/e2e/run.sh --test-name-pattern='^1\.'   # extra arguments go to `node --test`
#
# Environment:
#   LIVEGATE_BIN            gateway binary (default: target/debug/livegate)
#   LIVEGATE_E2E_WEB_DIR    serve the player from this folder (e.g. web) instead of the copy
#                           built into the binary: try player changes without a rebuild
#   LIVEGATE_E2E_CHROMIUM   browser (default: /usr/bin/chromium)
# Screenshots: target/e2e/*.png; gateway logs: target/e2e/logs/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	echo "tests/e2e: node and npm are needed (scripts/install-deps test)" >&2
	exit 1
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
	echo "tests/e2e: Node.js 20 or newer is needed (playwright-core), found $(node --version)" >&2
	exit 1
fi
chromium="${LIVEGATE_E2E_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
	echo "tests/e2e: $chromium not found; apt-get install chromium (scripts/install-deps test)" >&2
	exit 1
fi

# The pinned packages, installed again only when the lock file changed.
if [ ! -f "$here/node_modules/.package-lock.json" ] || ! cmp -s <(node -e '
	const l = require(process.argv[1]); delete l.name; delete l.version; console.log(JSON.stringify(l.packages["node_modules/playwright-core"]))' "$here/package-lock.json") \
	<(node -e 'const l = require(process.argv[1]); console.log(JSON.stringify(l.packages["node_modules/playwright-core"]))' "$here/node_modules/.package-lock.json"); then
	echo "tests/e2e: npm ci" >&2
	(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

bin="${LIVEGATE_BIN:-target/debug/livegate}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
if [ ! -x "$bin" ]; then
	echo "tests/e2e: $bin not found; build it first (cargo build) or set LIVEGATE_BIN" >&2
	exit 1
fi
export LIVEGATE_BIN="$bin"
export LIVEGATE_E2E_CHROMIUM="$chromium"

rm -rf "$root/target/e2e"
mkdir -p "$root/target/e2e"
cd "$root"
exec scripts/netns-run node --test --test-reporter=spec "$@" tests/e2e/player.test.mjs
