#!/usr/bin/env bash
# testbed.sh: two network namespaces joined by a veth, for scanner tests and
# benchmarks. The scanner's namespace <name>-s has one route, the veth, with
# the default via the targets' side; the targets' namespace <name>-t answers
# for a whole block (AnyIP: a local route on lo), so a listener on
# 0.0.0.0:port accepts for every address of the block and closed ports
# answer RST from the kernel.
#
#   testbed.sh up <name> <block>            create (block e.g. 198.18.0.0/16)
#   testbed.sh sparse <name> <block> <file> targets' side drops probes to
#                                           every block address not in <file>
#                                           (one address a line; nftables)
#   testbed.sh droprst <name> <ranges>      scanner's side drops its kernel's
#                                           RSTs from source ports in ranges
#                                           (lo-hi[,lo-hi...])
#   testbed.sh down <name>                  delete both namespaces (idempotent)
#
# The link uses 198.19.255.1/30 (scanner) and 198.19.255.2/30 (targets);
# the block must not overlap it. Needs root and iproute2; sparse and
# droprst need nftables; ethtool (offloads off) is optional.
set -euo pipefail

scanner_ip=198.19.255.1
target_ip=198.19.255.2

die() { echo "testbed: $*" >&2; exit 1; }

up() {
  local name=$1 block=$2
  local ns_s="$name-s" ns_t="$name-t" if_s="${name}s" if_t="${name}t"
  ip netns add "$ns_s"
  ip netns add "$ns_t"
  # no IPv6 on the link: the kernel's router solicitations, MLD reports and
  # DAD probes would cross the veth at random times during runs (the bench
  # times a scan by the frames the scanner's side sends)
  for ns in "$ns_s" "$ns_t"; do
    ip netns exec "$ns" sh -c 'for f in all default; do
      echo 1 > /proc/sys/net/ipv6/conf/$f/disable_ipv6; done' 2>/dev/null || true
  done
  ip link add "$if_s" netns "$ns_s" type veth peer name "$if_t" netns "$ns_t"
  ip -n "$ns_s" link set lo up
  ip -n "$ns_t" link set lo up
  ip -n "$ns_s" addr add "$scanner_ip/30" dev "$if_s"
  ip -n "$ns_t" addr add "$target_ip/30" dev "$if_t"
  ip -n "$ns_s" link set "$if_s" up
  ip -n "$ns_t" link set "$if_t" up
  ip -n "$ns_s" route add default via "$target_ip" dev "$if_s"
  ip -n "$ns_t" route add local "$block" dev lo
  # the targets' kernel answers for the whole block: room for many
  # half-open connections, and SYN-ACKs are not retransmitted for long.
  # SYN cookies always: the targets keep no half-open state, so a run
  # starts from the same state whatever ran before it (whether the previous
  # run left the listeners' SYN queues full changed the targets' cost per
  # probe, all of it on the scanner's cores) and no SYN-ACK is
  # retransmitted into the next run
  ip netns exec "$ns_t" sh -c '
    echo 65535 > /proc/sys/net/core/somaxconn
    echo 262144 > /proc/sys/net/ipv4/tcp_max_syn_backlog
    echo 1 > /proc/sys/net/ipv4/tcp_synack_retries
    echo 2 > /proc/sys/net/ipv4/tcp_syncookies'
  if command -v ethtool >/dev/null; then
    for pair in "$ns_s $if_s" "$ns_t $if_t"; do
      set -- $pair
      ip netns exec "$1" ethtool -K "$2" tso off gso off gro off tx off rx off >/dev/null 2>&1 ||
        echo "testbed: note: could not turn all offloads off on $2" >&2
    done
  else
    echo "testbed: note: ethtool not installed, offloads left on" >&2
  fi
}

sparse() {
  local name=$1 block=$2 file=$3
  command -v nft >/dev/null || die "nft not installed (Debian: nftables)"
  local elems
  elems=$( (grep -v '^\s*$' "$file" || true) | paste -sd, -)
  {
    echo "table ip testbed {"
    if [ -n "$elems" ]; then
      echo "  set live { type ipv4_addr; elements = { $elems } }"
    else
      echo "  set live { type ipv4_addr; }"
    fi
    echo "  chain in { type filter hook prerouting priority -300; policy accept;"
    echo "    ip daddr $block ip daddr != @live drop"
    echo "  }"
    echo "}"
  } | ip netns exec "$name-t" nft -f -
}

droprst() {
  local name=$1 ports=$2
  command -v nft >/dev/null || die "nft not installed (Debian: nftables)"
  ip netns exec "$name-s" nft -f - <<NFT
table inet testbed {
  chain out { type filter hook output priority 0; policy accept;
    tcp sport { $ports } tcp flags & rst == rst drop
  }
}
NFT
}

down() {
  local name=$1
  ip netns del "$name-s" 2>/dev/null || true
  ip netns del "$name-t" 2>/dev/null || true
}

[ $# -ge 2 ] || die "usage: testbed.sh up|sparse|droprst|down <name> [...]"
cmd=$1; shift
case "$cmd" in
  up) [ $# -eq 2 ] || die "usage: testbed.sh up <name> <block>"; up "$@" ;;
  sparse) [ $# -eq 3 ] || die "usage: testbed.sh sparse <name> <block> <file>"; sparse "$@" ;;
  droprst) [ $# -eq 2 ] || die "usage: testbed.sh droprst <name> <lo-hi[,lo-hi...]>"; droprst "$@" ;;
  down) down "$1" ;;
  *) die "unknown command $cmd" ;;
esac
