#!/usr/bin/env bash
# vendor/tiny_http is tiny_http 0.12.0 from crates.io plus tiny_http-0.12.0-callme.patch.
# This keeps the two from drifting apart, without network:
#
#   vendor/patches/check.sh          check: reverse-apply the patch to a copy of the vendored
#                                    tree; the result must be the pristine crate file for file
#                                    (tiny_http-0.12.0.sha256sums), and `diff -ruN` of the two
#                                    trees must be the patch file, byte for byte
#   vendor/patches/check.sh --write  after editing vendor/tiny_http: rewrite the patch file
#                                    from the pristine crate (~/.cargo/registry, or the
#                                    directory in $TINY_HTTP_PRISTINE), checked against the
#                                    sums first
#
# The patch has no timestamps (they are stripped from the `---`/`+++` lines), so it is
# reproducible. Apply it to a pristine tree with `patch -p1` from inside the crate directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
vendored=$(cd "$here/../tiny_http" && pwd)
patchfile=$here/tiny_http-0.12.0-callme.patch
sums=$here/tiny_http-0.12.0.sha256sums
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# diff exits 1 when the trees differ, which they do.
make_patch() { (cd "$tmp" && diff -ruN tiny_http-0.12.0 tiny_http || [ $? -eq 1 ]) |
    sed -E 's/^((---|\+\+\+) [^\t]*)\t.*$/\1/'; }

# The pristine tree must hold exactly the files in the sums list, with those contents.
check_pristine() {
    (cd "$1" && sha256sum --quiet -c "$sums") || return 1
    diff <(cut -c67- "$sums" | sort) <(cd "$1" && find . -type f | sed 's|^\./||' | sort) >&2
}

cp -r "$vendored" "$tmp/tiny_http"
if [ "${1:-}" = --write ]; then
    pristine=${TINY_HTTP_PRISTINE:-$(ls -d "$HOME"/.cargo/registry/src/*/tiny_http-0.12.0 | head -n1)}
    mkdir "$tmp/tiny_http-0.12.0"
    (cd "$pristine" && tar --exclude=.cargo-ok -cf - .) | (cd "$tmp/tiny_http-0.12.0" && tar xf -)
    check_pristine "$tmp/tiny_http-0.12.0" || { echo "$pristine is not tiny_http 0.12.0" >&2; exit 1; }
    make_patch >"$patchfile"
    echo "wrote $patchfile ($(grep -c '^+++ ' "$patchfile") files)"
    exit 0
fi

cp -r "$vendored" "$tmp/tiny_http-0.12.0"
if ! (cd "$tmp/tiny_http-0.12.0" && patch -R -E -p1 -s -f --no-backup-if-mismatch <"$patchfile" >&2); then
    echo "FAIL: $patchfile does not reverse-apply to vendor/tiny_http" >&2
    exit 1
fi
if ! check_pristine "$tmp/tiny_http-0.12.0"; then
    echo "FAIL: vendor/tiny_http minus the patch is not pristine tiny_http 0.12.0:" \
        "vendor/tiny_http was edited without vendor/patches/check.sh --write" >&2
    exit 1
fi
if ! make_patch | cmp -s - "$patchfile"; then
    echo "FAIL: $patchfile is not what diff -ruN gives; run vendor/patches/check.sh --write" >&2
    exit 1
fi
echo "ok: vendor/tiny_http = tiny_http 0.12.0 + $(basename "$patchfile")"
