#!/usr/bin/env bash
# bench-scan.sh: trawl side by side with masscan, zmap and nmap on the netns
# testbed (`make bench-scan`). Installs the peers from Debian when missing
# (as root), builds trawl and the harness, and runs the matrix; arguments go
# to the harness (bench/scan), e.g. --quick, --tools trawl,zmap, --json FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
[ "$(id -u)" = 0 ] || { echo "bench-scan: needs root (network namespaces, raw sockets)" >&2; exit 1; }
packages=(masscan zmap nmap iproute2 nftables ethtool)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || { echo "bench-scan: missing ${missing[*]} and no apt-get" >&2; exit 1; }
  echo "bench-scan: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p bin
"$GO" build -o bin/trawl .
"$GO" build -o bin/bench-scan ./bench/scan
exec bin/bench-scan --trawl bin/trawl --testbed-script engine/testbed/testbed.sh "$@"
