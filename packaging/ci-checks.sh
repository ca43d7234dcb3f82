#!/usr/bin/env bash
# Packaging checks for CI (called from .ci/run) and for anyone about to ship an RPM:
#   1. build the RPM (packaging/build-rpm.sh: cargo build --release, then rpmbuild)
#   2. its file list (rpm -qlp), modes and owners, and its scriptlets (rpm -qp --scripts)
#   3. rpmlint, with packaging/rpmlint.toml (EL9 policy on Debian's rpmlint): no errors
#   4. systemd-analyze verify of packaging/callme.service
#   5. packaging/check-glibc.sh: the binary runs on EL9's glibc 2.34
#   6. vendor/patches/check.sh: vendor/tiny_http is tiny_http 0.12.0 plus the patch file
#
# It installs the Debian packages it needs (rpm, rpmlint, systemd, binutils). A tool that
# cannot be installed is reported as "SKIPPED: <tool>: <why>" and its checks are skipped;
# the exit status is non-zero only when a check really fails. The release build is the one
# the rest of CI uses (target/release), so after `cargo build --release` this adds seconds.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")

passed=0
failed=0
skipped=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
skip() { echo "SKIPPED: $*"; skipped=$((skipped + 1)); }

apt_updated=
# have TOOL PACKAGE: true when TOOL is (or could be made) available.
have() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        why="not installed, and apt-get is not usable here (not root or not Debian)"
        return 1
    fi
    if [ -z "$apt_updated" ]; then
        echo "== apt-get update"
        apt-get update -qq >/tmp/callme-ci-apt.log 2>&1 || true
        apt_updated=1
        export CALLME_APT_UPDATED=1 # tells build-rpm.sh and check-glibc.sh
    fi
    echo "== apt-get install $2 (for $1)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >>/tmp/callme-ci-apt.log 2>&1; then
        why="apt-get install $2 failed (see /tmp/callme-ci-apt.log)"
        return 1
    fi
    command -v "$1" >/dev/null 2>&1 && return 0
    why="package $2 installed but $1 is still missing"
    return 1
}

version=$(cargo pkgid)
version=${version##*[#@]}
rpm_file="$target_dir/rpm/RPMS/x86_64/callme-$version-1.el9.x86_64.rpm"

echo "== 1. build the RPM"
built=
if have rpmbuild rpm; then
    if packaging/build-rpm.sh >/tmp/callme-rpmbuild.log 2>&1; then
        built=1
        pass "rpm built: $rpm_file"
    else
        tail -40 /tmp/callme-rpmbuild.log
        fail "packaging/build-rpm.sh (full log: /tmp/callme-rpmbuild.log)"
    fi
else
    skip "rpmbuild: $why"
fi

echo "== 2. contents and scriptlets"
if [ -n "$built" ]; then
    listing=$(rpm -qlvp "$rpm_file")
    echo "$listing"
    ok=1
    # mode, owner, group, path (rpm -qlv prints ls -l style lines).
    while read -r mode owner group path; do
        if ! echo "$listing" | awk -v m="$mode" -v o="$owner" -v g="$group" -v p="$path" \
            '$1 == m && $3 == o && $4 == g && $NF == p { found = 1 } END { exit !found }'; then
            echo "missing or wrong: $mode $owner $group $path"
            ok=
        fi
    done <<'LIST'
-rwxr-xr-x root root /usr/bin/callme
drwxr-xr-x root root /etc/callme
-rw-r----- root callme /etc/callme/callme.conf
-rw-r--r-- root root /usr/lib/systemd/system/callme.service
-rw-r--r-- root root /usr/lib/sysusers.d/callme.conf
drwxr-x--- callme callme /var/lib/callme
-rw-r--r-- root root /usr/share/doc/callme/callme.conf.example
LIST
    if [ -d docs ]; then
        for f in docs/*; do
            echo "$listing" | grep -q " /usr/share/doc/callme/$f\$" || { echo "missing: /usr/share/doc/callme/$f"; ok=; }
        done
    fi
    rpm -qcp "$rpm_file" | grep -qx /etc/callme/callme.conf || { echo "callme.conf is not %config"; ok=; }
    rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file" | grep -q '^cn /etc/callme/callme.conf$' \
        || { echo "callme.conf is not %config(noreplace)"; ok=; }
    if [ -n "$ok" ]; then pass "rpm -qlp: files, modes and owners"; else fail "rpm -qlp: files, modes and owners"; fi

    scripts=$(rpm -qp --scripts "$rpm_file")
    echo "$scripts"
    ok=1
    for want in 'preinstall scriptlet' 'useradd -r -g callme -d /var/lib/callme -s /sbin/nologin' \
        'postinstall scriptlet' 'preset callme.service' 'preuninstall scriptlet' \
        'disable --now callme.service' 'postuninstall scriptlet' 'try-restart callme.service'; do
        echo "$scripts" | grep -qF -- "$want" || { echo "scriptlets lack: $want"; ok=; }
    done
    if [ -n "$ok" ]; then pass "rpm -qp --scripts"; else fail "rpm -qp --scripts"; fi
else
    skip "rpm -qlp/--scripts: no RPM was built"
fi

echo "== 3. rpmlint"
if [ -z "$built" ]; then
    skip "rpmlint: no RPM was built"
elif have rpmlint rpmlint; then
    # Exit status: 0 clean or warnings only, 64 errors, 66 badness; anything else = could not run.
    rpmlint -c packaging/rpmlint.toml "$rpm_file" "$target_dir/rpm/SRPMS/callme-$version-1.el9.src.rpm" \
        packaging/callme.spec >/tmp/callme-rpmlint.log 2>&1
    rc=$?
    cat /tmp/callme-rpmlint.log
    case $rc in
    0) pass "rpmlint: no errors" ;;
    64 | 66) fail "rpmlint reported errors" ;;
    *) skip "rpmlint: it did not run (exit $rc)" ;;
    esac
else
    skip "rpmlint: $why"
fi

echo "== 4. systemd-analyze verify"
if grep -q '^ExecReload=' packaging/callme.service; then
    fail "callme.service has ExecReload=, but reload is not supported"
fi
if [ ! -x "$target_dir/release/callme" ]; then
    skip "systemd-analyze verify: $target_dir/release/callme missing (the RPM build makes it)"
elif have systemd-analyze systemd; then
    # verify checks that ExecStart= binaries exist and are executable, so it runs on a copy
    # of the unit whose /usr/bin/callme points at the freshly built target/release/callme.
    # Everything else is the unit as shipped.
    tmp=$(mktemp -d)
    sed "s#/usr/bin/callme#$target_dir/release/callme#g" packaging/callme.service >"$tmp/callme.service"
    if out=$(systemd-analyze verify "$tmp/callme.service" 2>&1) && [ -z "$out" ]; then
        pass "systemd-analyze verify callme.service: clean"
    elif [ -z "$out" ]; then
        fail "systemd-analyze verify callme.service failed"
    else
        echo "$out"
        fail "systemd-analyze verify callme.service: not clean"
    fi
    rm -rf "$tmp"
else
    skip "systemd-analyze: $why"
fi

echo "== 5. glibc symbol versions"
if [ ! -x "$target_dir/release/callme" ]; then
    cargo build --release || fail "cargo build --release"
fi
if have objdump binutils; then
    packaging/check-glibc.sh
    case $? in
    0) pass "glibc <= 2.34" ;;
    1) fail "glibc: symbols newer than GLIBC_2.34" ;;
    *) skip "glibc check: could not run" ;;
    esac
else
    skip "objdump: $why"
fi

echo "== 6. vendor/tiny_http is tiny_http 0.12.0 plus the patch file"
if have patch patch; then
    if vendor/patches/check.sh; then
        pass "vendor/patches/check.sh: the patch file matches the vendored tree"
    else
        fail "vendor/patches/check.sh: patch file and vendor/tiny_http differ"
    fi
else
    skip "patch: $why"
fi

echo "packaging: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
