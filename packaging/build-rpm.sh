#!/usr/bin/env bash
# Build the callme RPM for EL9 on this (Debian) build machine, from the repository it sits in.
#
#   packaging/build-rpm.sh            # cargo build --release, then rpmbuild
#
# Result: target/rpm/RPMS/x86_64/callme-<version>-1.el9.x86_64.rpm and the matching
# target/rpm/SRPMS/callme-<version>-1.el9.src.rpm (under $CARGO_TARGET_DIR if that is set) (for `mock --rebuild` on EL9). <version> is
# the one in Cargo.toml. The spec packages the prebuilt binary, so rpmbuild needs no cargo.
#
# Debian's rpm has no systemd-rpm-macros, so the systemd directories are defined here with
# their EL9 values; `--define "dist .el9"` gives the EL9 release tag, and _docdir_fmt is
# EL9's (redhat-rpm-config), so a licence file lands in /usr/share/licenses/callme.
#
# Needs: cargo, rpmbuild (Debian package `rpm`), strip (`binutils`). Missing packages are
# installed with apt-get when running as root; otherwise the script says what to install.
set -euo pipefail

cd "$(dirname "$0")/.."
# Where cargo puts its output: target/ unless CARGO_TARGET_DIR says otherwise.
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")

need() { # need TOOL DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing $2 (for $1)"
        if [ -z "${CALLME_APT_UPDATED:-}" ]; then
            apt-get update -qq
            export CALLME_APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
    command -v "$1" >/dev/null 2>&1 || { echo "error: $1 not found; install the $2 package" >&2; exit 1; }
}

need cargo cargo
need rpmbuild rpm
need strip binutils

# The version: Cargo.toml is the source of truth, and the spec must say the same.
pkgid=$(cargo pkgid)
version=${pkgid##*[#@]}
spec_version=$(sed -n 's/^Version:[[:space:]]*//p' packaging/callme.spec)
if [ "$version" != "$spec_version" ]; then
    echo "error: Cargo.toml has version $version but packaging/callme.spec has $spec_version;" >&2
    echo "       update Version: (and add a %changelog entry) in the spec" >&2
    exit 1
fi

echo "== cargo build --release"
cargo build --release

topdir="$target_dir/rpm"
stage="$topdir/stage/callme-$version"
rm -rf "$topdir"
mkdir -p "$topdir"/{BUILD,BUILDROOT,RPMS,SOURCES,SPECS,SRPMS} "$stage"

echo "== source tree $stage"
install -m 0755 "$target_dir/release/callme" "$stage/callme"
strip "$stage/callme" # symbols are for a debug build; rpmlint flags unstripped binaries
install -m 0644 callme.conf.example packaging/callme.service packaging/callme.sysusers "$stage/"
# Written in parallel by others: take whatever exists.
for f in README.md LICENSE LICENSE.md LICENSE.txt COPYING docs contrib; do
    if [ -e "$f" ]; then
        cp -R "$f" "$stage/"
    fi
done
chmod -R u=rwX,go=rX "$stage"
chmod 0755 "$stage/callme"
# Reproducible-ish tarball: fixed owner and sorted names.
tar --sort=name --owner=0 --group=0 --numeric-owner \
    -czf "$topdir/SOURCES/callme-$version.tar.gz" -C "$topdir/stage" "callme-$version"
cp packaging/callme.spec "$topdir/SPECS/"

echo "== rpmbuild"
rpmbuild -ba \
    --define "_topdir $topdir" \
    --define "dist .el9" \
    --define "_unitdir /usr/lib/systemd/system" \
    --define "_sysusersdir /usr/lib/sysusers.d" \
    --define "_tmpfilesdir /usr/lib/tmpfiles.d" \
    --define "_docdir /usr/share/doc" \
    --define "_docdir_fmt %%{NAME}" \
    --target x86_64 \
    "$topdir/SPECS/callme.spec"

rpm_file="$topdir/RPMS/x86_64/callme-$version-1.el9.x86_64.rpm"
if [ ! -f "$rpm_file" ]; then
    echo "error: rpmbuild finished but $rpm_file is missing" >&2
    ls -R "$topdir/RPMS" >&2 || true
    exit 1
fi
echo "== built $rpm_file"
ls "$topdir"/SRPMS/*.src.rpm
