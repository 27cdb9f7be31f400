#!/usr/bin/env bash
# Renders every diagrams/*.puml to SVG in diagrams/svg/ (the SVGs are committed
# so the README can show them). Installs Debian's plantuml package first when
# plantuml is not on PATH. Any syntax error makes it exit non-zero.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

if ! command -v plantuml >/dev/null 2>&1; then
    echo "plantuml not found; installing Debian's plantuml package" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq plantuml
    if ! command -v plantuml >/dev/null 2>&1; then
        echo "plantuml still not on PATH after installing it" >&2
        exit 1
    fi
fi

shopt -s nullglob
sources=(*.puml)
if [ "${#sources[@]}" -eq 0 ]; then
    echo "no .puml files in diagrams/" >&2
    exit 1
fi

mkdir -p svg
# -o is relative to each source's directory. -failfast2 checks every file for
# syntax errors before rendering anything and exits non-zero if one has any.
plantuml -tsvg -charset UTF-8 -failfast2 -o svg "${sources[@]}"

for src in "${sources[@]}"; do
    out="svg/${src%.puml}.svg"
    if [ ! -s "$out" ]; then
        echo "missing output: diagrams/$out" >&2
        exit 1
    fi
    echo "rendered diagrams/$src -> diagrams/$out"
done
