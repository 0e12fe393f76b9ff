#!/usr/bin/env bash
# Builds (once) a real kube-apiserver / kube-controller-manager / kube-scheduler v1.20.2 from
# Debian bookworm's `kubernetes` source package and caches the binaries outside the repository.
#
# Usage: build.sh            -> prints the binary directory as the last line of stdout
#        source build.sh     -> defines the functions only (for tests)
# Progress and diagnostics go to stderr so callers can read the directory from stdout.
#
# Environment:
#   XDG_CACHE_HOME       cache root (default $HOME/.cache)
#   DCA_E2E_KEEP_BUILD=1 keep the source tree and Go build cache after a successful build
#
# Why from source: Debian ships no kube-apiserver binary package, and only Debian packages may be
# used. Each fix below says what failed without it.
set -euo pipefail

readonly K8S_VERSION=v1.20.2
readonly K8S_MAJOR=1
readonly K8S_MINOR=20
readonly K8S_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56
# The upstream release date of v1.20.2, so the stamp does not change between builds.
readonly K8S_BUILD_DATE=2021-01-13T13:20:00Z
readonly DEB_SRC_VERSION='1.20.5+really1.20.2-1.1+deb12u1'
readonly COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler)

readonly CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/datadog-cluster-agent/k8s-${K8S_VERSION}"
readonly BIN_DIR="$CACHE_ROOT/bin"
readonly WORK_DIR="$CACHE_ROOT/work"
readonly STAMP="$BIN_DIR/.complete"

log() { printf 'control plane: %s\n' "$*" >&2; }
die() { printf 'control plane: ERROR: %s\n' "$*" >&2; exit 1; }

# Packages needed to run the control plane (etcd) and to build it (the rest).
readonly RUNTIME_PACKAGES=(etcd-server etcd-client)
readonly BUILD_PACKAGES=(golang-go golang-github-modern-go-reflect2-dev dpkg-dev)

missing_packages() {
  local pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
      printf '%s\n' "$pkg"
    fi
  done
}

# Installs the given Debian packages unless they are already present. `apt-get update` runs only
# when the first attempt fails (stale or absent package lists).
ensure_packages() {
  local missing
  mapfile -t missing < <(missing_packages "$@")
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi
  if [[ $EUID -ne 0 ]]; then
    die "missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})"
  fi
  log "installing Debian packages: ${missing[*]}"
  # Other processes may be running apt at the same time: wait for the dpkg lock instead of failing.
  local apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
  if ! DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" >&2; then
    log "apt-get install failed; refreshing package lists once and retrying"
    apt-get update -q -o DPkg::Lock::Timeout=600 >&2
    DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" >&2 \
      || die "could not install: ${missing[*]}"
  fi
}

# Puts etcd and etcdctl next to the Kubernetes binaries so the harness needs only one directory.
link_etcd() {
  local tool path
  for tool in etcd etcdctl; do
    path="$(command -v "$tool" || true)"
    [[ -n $path ]] || die "$tool not found on PATH after installing ${RUNTIME_PACKAGES[*]}"
    ln -sfn "$path" "$BIN_DIR/$tool"
  done
}

# What the stamp records for binaries built by this script: the version and the exact Debian
# source package they came from.
readonly STAMP_LINE="$K8S_VERSION $DEB_SRC_VERSION"

# Succeeds when the cache holds every binary, built from this very K8S_VERSION and
# DEB_SRC_VERSION (a new source version must rebuild); says why not on stderr otherwise.
cached_binaries_ok() {
  if [[ ! -f $STAMP ]]; then
    log "no build stamp $STAMP"
    return 1
  fi
  local recorded
  recorded="$(<"$STAMP")"
  if [[ $recorded != "$STAMP_LINE" ]]; then
    log "cached binaries were built from '$recorded', this script builds '$STAMP_LINE'"
    return 1
  fi
  local cmd
  for cmd in "${COMMANDS[@]}"; do
    if [[ ! -x $BIN_DIR/$cmd ]]; then
      log "cached $cmd missing from $BIN_DIR"
      return 1
    fi
  done
}

# The Debian mirror this machine already uses for bookworm (deb-src lives at the same URI).
debian_mirror() {
  local uri
  uri="$(apt-cache policy 2>/dev/null | awk '$3 ~ /^bookworm\/main$/ {print $2; exit}')"
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# Downloads and unpacks the source package through a private apt configuration so /etc/apt and
# the system package lists stay untouched.
fetch_source() {
  local apt_dir="$CACHE_ROOT/apt" mirror
  mirror="$(debian_mirror)"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  local suite
  for suite in bookworm bookworm-updates; do
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
      "$mirror" "$suite"
  done >"$apt_dir/sources.list"
  local apt_private=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    # The private directories belong to the caller; apt's _apt sandbox user could not write them.
    -o "APT::Sandbox::User=$(id -un)"
  )
  log "fetching source package kubernetes=$DEB_SRC_VERSION from $mirror (private apt config)"
  apt-get -q "${apt_private[@]}" update >&2
  (cd "$WORK_DIR" && apt-get -q "${apt_private[@]}" source "kubernetes=$DEB_SRC_VERSION" >&2)
}

# The Go import paths of every package tagged for OpenAPI generation, selected the way 1.20's
# build/root/Makefile.generated_files does for pkg/generated/openapi: Go files with a `// +k8s:`
# tag line outside ./vendor, staging repos named by their vendor/ path, minus the code-generator
# and sample-apiserver examples.
openapi_packages() {
  local src="$1"
  (
    cd "$src"
    find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor -o -path ./debian \) -prune \) \
      -type f -name '*.go' -print0 \
      | xargs -0 grep -l '^// *+k8s:' \
      | xargs grep -l '+k8s:openapi-gen=' \
      | sed 's|/[^/]*$||; s|^\./||; s|^staging/src/|vendor/|' \
      | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
      | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|'
  )
}

build_from_source() {
  ensure_packages "${BUILD_PACKAGES[@]}"
  command -v go >/dev/null || die "go not found after installing golang-go"

  rm -rf "$WORK_DIR"
  mkdir -p "$WORK_DIR"
  fetch_source

  local src
  src="$(find "$WORK_DIR" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
  [[ -n $src && -d $src/cmd/kube-apiserver ]] || die "unpacked source tree not found in $WORK_DIR"

  # Fix 1: build in GOPATH mode like 1.20's own scripts; module mode wants to rewrite go.mod.
  local gopath="$WORK_DIR/gopath"
  mkdir -p "$gopath/src/k8s.io"
  ln -sfn "$src" "$gopath/src/k8s.io/kubernetes"
  export GOPATH="$gopath" GO111MODULE=off GOPROXY=off CGO_ENABLED=0
  # Outside WORK_DIR so an interrupted build restarts warm.
  export GOCACHE="$CACHE_ROOT/gocache"
  unset GOFLAGS
  local pkgroot=k8s.io/kubernetes

  # Fix 3: vendored reflect2 1.0.1 faults at run time with Go >= 1.18; use Debian's 1.0.2.
  local reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [[ -d $reflect2 ]] || die "$reflect2 missing (golang-github-modern-go-reflect2-dev)"
  log "replacing vendored modern-go/reflect2 with Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
  rm -f "$src/vendor/github.com/modern-go/reflect2/"*.go "$src/vendor/github.com/modern-go/reflect2/"*.s
  cp "$reflect2/"*.go "$reflect2/"*.s "$src/vendor/github.com/modern-go/reflect2/"

  # Fix 2: the tarball lacks the generated OpenAPI definitions the apiservers link against.
  log "generating pkg/generated/openapi (openapi-gen)"
  go build -p 2 -o "$WORK_DIR/openapi-gen" "$pkgroot/vendor/k8s.io/kube-openapi/cmd/openapi-gen"
  local inputs
  inputs="$(openapi_packages "$src" | paste -sd, -)"
  [[ -n $inputs ]] || die "no +k8s:openapi-gen packages found"
  (
    cd "$gopath/src/$pkgroot"
    "$WORK_DIR/openapi-gen" \
      --logtostderr \
      --input-dirs "$inputs" \
      --output-base "$gopath/src" \
      --output-package "$pkgroot/pkg/generated/openapi" \
      --output-file-base zz_generated.openapi \
      --go-header-file "$src/hack/boilerplate/boilerplate.generatego.txt" \
      --report-filename "$WORK_DIR/openapi-violations.txt" >&2
  )
  [[ -s $src/pkg/generated/openapi/zz_generated.openapi.go ]] || die "openapi-gen produced nothing"

  local x ldflags="-s -w"
  for x in vendor/k8s.io/component-base/version vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkgroot/$x.gitVersion=$K8S_VERSION"
    ldflags+=" -X $pkgroot/$x.gitMajor=$K8S_MAJOR"
    ldflags+=" -X $pkgroot/$x.gitMinor=$K8S_MINOR"
    ldflags+=" -X $pkgroot/$x.gitCommit=$K8S_GIT_COMMIT"
    ldflags+=" -X $pkgroot/$x.gitTreeState=clean"
    ldflags+=" -X $pkgroot/$x.buildDate=$K8S_BUILD_DATE"
  done

  local staging="$WORK_DIR/bin"
  mkdir -p "$staging"
  local cmd start
  for cmd in "${COMMANDS[@]}"; do
    start=$SECONDS
    log "building $cmd (go build -p 2)"
    go build -p 2 -tags providerless -trimpath -ldflags "$ldflags" \
      -o "$staging/$cmd" "$pkgroot/cmd/$cmd"
    log "built $cmd in $((SECONDS - start)) s"
  done

  local version
  version="$("$staging/kube-apiserver" --version)"
  [[ $version == "Kubernetes $K8S_VERSION" ]] || die "unexpected version stamp: $version"

  mkdir -p "$BIN_DIR"
  # No stamp while old and new binaries may be mixed (an interrupted move rebuilds next time).
  rm -f "$STAMP"
  for cmd in "${COMMANDS[@]}"; do
    mv -f "$staging/$cmd" "$BIN_DIR/$cmd"
  done
  printf '%s\n' "$STAMP_LINE" >"$STAMP"

  if [[ ${DCA_E2E_KEEP_BUILD:-0} != 1 ]]; then
    # ~1.5 GB of sources and Go build cache are not needed once the binaries exist. Go marks its
    # module/build cache files read-only, hence chmod before rm.
    chmod -R u+w "$WORK_DIR" 2>/dev/null || true
    rm -rf "$WORK_DIR" "$CACHE_ROOT/apt" "$CACHE_ROOT/gocache"
  fi
}

main() {
  mkdir -p "$CACHE_ROOT"
  # Concurrent test binaries call this at once: one builds, the others wait and then reuse.
  exec 9>"$CACHE_ROOT/.lock"
  if ! flock -n 9; then
    log "another process is building or checking the binaries; waiting for $CACHE_ROOT/.lock"
    flock 9
  fi

  ensure_packages "${RUNTIME_PACKAGES[@]}"
  mkdir -p "$BIN_DIR"
  link_etcd

  if cached_binaries_ok; then
    log "reusing cached binaries in $BIN_DIR"
  else
    local start=$SECONDS
    log "no cached binaries in $BIN_DIR; building Kubernetes $K8S_VERSION from source (5-7 min on 2 cores)"
    build_from_source
    log "built and cached binaries in $BIN_DIR in $((SECONDS - start)) s"
  fi
  printf '%s\n' "$BIN_DIR"
}

# Sourcing the script (as its test does) defines the functions without running anything.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
