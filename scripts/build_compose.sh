#!/usr/bin/env bash
# Build Docker Compose (the `docker compose` CLI plugin) from its Go module, for the test
# that checks deploy/compose/ with `docker compose config`: Debian packages only the
# old Python docker-compose 1.x, and no registry we reach has the plugin.
#
# The module's go.mod has exclude directives, which `go install module@version` refuses;
# they only count in the main module, so a throwaway main module requires compose and
# carries the same excludes.
#
# Usage: scripts/build_compose.sh OUT_DIR   (OUT_DIR/docker-compose; idempotent)
set -euo pipefail

out=${1:?usage: build_compose.sh OUT_DIR}
COMPOSE_VERSION=${COMPOSE_VERSION:-v5.6.0}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
module=github.com/docker/compose/v5

mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -x "$out/docker-compose" ]; then exit 0; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-compose-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

gomod=$("$GO" mod download -json "$module@$COMPOSE_VERSION" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')
python3 - "$gomod" "$module" "$COMPOSE_VERSION" > go.mod <<'PY'
import re
import sys

path, module, version = sys.argv[1:]
text = open(path).read()
print("module flotilla-compose-build\n")
print("go " + re.search(r"^go\s+(\S+)", text, re.M).group(1))
print(f"\nrequire {module} {version}\n")
for block in re.findall(r"^exclude\s*\((.*?)^\)", text, re.M | re.S):
    print("exclude (" + block + ")")
for line in re.findall(r"^exclude\s+[^(\s].*$", text, re.M):
    print(line)
PY
printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd"\n' "$module" > tools.go
export GOFLAGS=-mod=mod CGO_ENABLED=0
"$GO" mod tidy
"$GO" build -ldflags "-s -w -X $module/internal.Version=$COMPOSE_VERSION" \
  -o "$out/docker-compose.tmp" "$module/cmd"
mv "$out/docker-compose.tmp" "$out/docker-compose"
