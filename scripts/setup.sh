#!/usr/bin/env bash
# Installs what osufs needs on a Debian or Ubuntu machine: FUSE 3 and its headers (pyfuse3
# builds against them), fuse-overlayfs (for --writable without root), Ceph's monitor, OSD and
# radosgw (the tests' S3 server), a virtualenv in .venv
# with pyfuse3 built from its pinned sdist and patches/pyfuse3 (docs/pyfuse3.md), and the
# package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(fuse3 libfuse3-dev pkg-config fuse-overlayfs patch)
# A one-node Ceph cluster: its radosgw is the S3 server the shared tier's tests start.
packages+=(ceph-mon ceph-osd radosgw)
python3 -c 'import ensurepip' 2>/dev/null || packages+=(python3-venv)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

# pyfuse3 with our patches, versioned by them (3.5.0+osufs.<hash>), rebuilt when they change.
pyfuse3_version=3.5.0
pyfuse3_sha256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
patched_version="$pyfuse3_version+osufs.$(cat patches/pyfuse3/*.patch | sha256sum | cut -c1-12)"
installed_version() {
  "$1" -c 'from importlib.metadata import version; print(version("pyfuse3"))' 2>/dev/null || true
}
build="$PWD/build/pyfuse3"
source="$build/pyfuse3-$pyfuse3_version"  # kept: tests/test_pyfuse3_patch.py runs its tests
if [ "$(installed_version .venv/bin/python)" != "$patched_version" ] || [ ! -d "$source" ]; then
  echo "building pyfuse3 $patched_version"
  rm -rf "$build"
  mkdir -p "$build"
  .venv/bin/python -m pip download -q --no-binary :all: --no-deps -d "$build" \
    "pyfuse3==$pyfuse3_version"
  sdist="$build/pyfuse3-$pyfuse3_version.tar.gz"
  echo "$pyfuse3_sha256  $sdist" | sha256sum --check --quiet
  tar -xzf "$sdist" -C "$build" --no-same-owner
  rm "$source/src/pyfuse3/__init__.c"  # generated from the unpatched .pyx: Cython makes it anew
  for file in patches/pyfuse3/*.patch; do
    patch --quiet --strip=1 --directory="$source" <"$file"
  done
  SETUPTOOLS_SCM_PRETEND_VERSION="$patched_version" .venv/bin/python -m pip wheel -q --no-deps \
    --build-constraint patches/pyfuse3/build-constraints.txt -w "$build/dist" "$source"
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "$build"/dist/pyfuse3-*.whl
fi
.venv/bin/python -m pip install -q -e '.[test]'
# An editable install leaves osufs's own bytecode to the first import, which writes none where
# PYTHONDONTWRITEBYTECODE is set: compiled here, a mount's start does not pay 0.3 s compiling.
.venv/bin/python -m compileall -q osufs
