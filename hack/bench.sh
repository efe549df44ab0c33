#!/usr/bin/env bash
# circuit's benchmarks: the Go benchmarks, then end-to-end timings of the
# real binary. Prints a markdown report on stdout, and writes it to $1 if
# given. Run as root, through `make bench` (which builds bin/circuit and
# bin/cni first). docs/benchmarks.md says what each number means.
#
# Everything made here is removed at exit: the state dir (mktemp), the
# bridge (10.210.204.0/22), the sleeper processes, the lb services
# (10.210.250.x, in a network namespace of their own) and that namespace.
#
# BENCH_COUNT (default 5) is go test's -count; BENCH_GO=0 skips the Go
# benchmarks, BENCH_E2E=0 the end-to-end part.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME with a '.'
cd "$(dirname "$0")/.."
root=$PWD
report_file=${1:-}
count=${BENCH_COUNT:-5}

[ "$(id -u)" = 0 ] || { echo "bench: run as root (circuit and the benchmarks change network namespaces)" >&2; exit 1; }
if [ ! -x bin/circuit ] || [ ! -x bin/cni/bridge ]; then
	make build cni
fi
export CNI_PATH=$root/bin/cni

work=$(mktemp -d /tmp/circuit-bench.XXXXXX)
BIN=$work/circuit
export CIRCUIT_STATE=$work/state
bridge=cbn$(printf '%04x' $((RANDOM)))
lbns=cbench-lb-$$
net=benchnet
sleepers=()

cleanup() {
	set +e
	if [ -e "/run/netns/$lbns" ]; then
		for s in $(ip netns exec "$lbns" "$BIN" --state "$work/lbstate" lb list -q 2>/dev/null); do
			ip netns exec "$lbns" "$BIN" --state "$work/lbstate" lb delete "$s" >/dev/null 2>&1
		done
		ip netns del "$lbns"
	fi
	"$BIN" network delete --force "$net" >/dev/null 2>&1
	for p in "${sleepers[@]}"; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	ip link del "$bridge" >/dev/null 2>&1
	for p in "$work"/state/netns/*; do [ -e "$p" ] && umount -l "$p" 2>/dev/null; done
	rm -rf "$work"
}
trap cleanup EXIT
# A copy, so that a test elsewhere rebuilding bin/circuit (testutil does,
# without CIRCUIT_TEST_BIN) cannot swap the binary in the middle of a run.
cp bin/circuit "$BIN"

report=$work/report.md
say() { printf '%s\n' "$*" >>"$report"; }
log() { printf 'bench: %s\n' "$*" >&2; }

# stats FILE: median, p95 (nearest rank), min and max of a file of
# microsecond values, one a line, in ms.
stats() {
	sort -n "$1" | awk '{ v[NR] = $1 }
		END {
			m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			p = int(NR * 0.95); if (p < NR * 0.95) p++
			printf "%.1f %.1f %.1f %.1f\n", m / 1000, v[p] / 1000, v[1] / 1000, v[NR] / 1000
		}'
}

# timed FILE CMD...: runs CMD, appends its wall time in µs to FILE.
timed() {
	local f=$1 t0 t1
	shift
	t0=${EPOCHREALTIME/./}
	"$@" >/dev/null
	t1=${EPOCHREALTIME/./}
	echo $((t1 - t0)) >>"$f"
}

# new_sleeper: starts a process alone in a new network namespace and sets
# SLEEPER to its PID once the namespace is its own.
new_sleeper() {
	unshare -n sleep 3600 &
	local pid=$! i ns
	sleepers+=("$pid")
	for i in $(seq 200); do
		ns=$(readlink "/proc/$pid/ns/net" 2>/dev/null || true)
		if [ -n "$ns" ] && [ "$ns" != "$(readlink /proc/self/ns/net)" ]; then
			SLEEPER=$pid
			return
		fi
		sleep 0.01
	done
	echo "bench: sleeper $pid did not get a network namespace of its own" >&2
	exit 1
}

say "# circuit benchmarks"
say ""
say "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
say "- machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
say "- $(go version | cut -d' ' -f3-), $("$BIN" version 2>/dev/null | head -1)"
say "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- Go benchmarks --------------------------------------------------------
if [ "${BENCH_GO:-1}" != 0 ]; then
	mapfile -t pkgs < <(grep -rl --include='*_test.go' '^func Benchmark' ds controller pkg | xargs -n1 dirname | sort -u | sed 's|^|./|')
	log "go test -run '^\$' -bench . -benchmem -count $count ${pkgs[*]}"
	CIRCUIT_TEST_CNI_PATH=$CNI_PATH CIRCUIT_TEST_BIN=$BIN go test -run '^$' -bench . -benchmem -count "$count" "${pkgs[@]}" | tee "$work/go.txt" >&2
	# name unit value, one line per metric, then the median of each.
	awk '/^Benchmark/ { for (i = 3; i < NF; i += 2) print $1, $(i + 1), $i }' "$work/go.txt" |
		sort -k1,1 -k2,2 -k3,3g >"$work/go.metrics"
	say ""
	say "## Go benchmarks (median of $count runs; ns/op also min-max)"
	say ""
	say "| benchmark | time/op | B/op | allocs/op | other |"
	say "| --- | --- | --- | --- | --- |"
	awk '
		function flush(   m, s) {
			if (key == "") return
			m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
			split(key, s, " ")
			if (s[1] != bench) { if (bench != "") row(); bench = s[1]; delete val; other = "" }
			if (s[2] == "ns/op") val["ns"] = human(m) " (" human(v[1]) "-" human(v[n]) ")"
			else if (s[2] == "B/op" || s[2] == "allocs/op") val[s[2]] = m
			else other = other (other == "" ? "" : ", ") sprintf("%.1f %s", m, s[2])
		}
		function human(ns) {
			if (ns >= 1e6) return sprintf("%.1f ms", ns / 1e6)
			if (ns >= 1e3) return sprintf("%.1f µs", ns / 1e3)
			return sprintf("%.0f ns", ns)
		}
		function row() { printf "| %s | %s | %s | %s | %s |\n", bench, val["ns"], val["B/op"], val["allocs/op"], other }
		{ k = $1 " " $2; if (k != key) { flush(); key = k; n = 0 } v[++n] = $3 }
		END { flush(); if (bench != "") row() }
	' "$work/go.metrics" >>"$report"
	if grep -q '^--- SKIP' "$work/go.txt"; then
		say ""
		say "Skipped: $(grep -A1 '^--- SKIP' "$work/go.txt" | grep -v '^--' | tr -s ' ' | paste -sd';' -)"
	fi
fi

# --- End to end ------------------------------------------------------------
if [ "${BENCH_E2E:-1}" != 0 ]; then
	cat >"$work/net.conf" <<CONF
{
  "cniVersion": "0.2.0", "name": "$net", "type": "bridge", "bridge": "$bridge",
  "ipMasq": true, "isGateway": true,
  "ipam": {"type": "host-local", "subnet": "10.210.204.0/22", "dataDir": "$work/ipam",
           "routes": [{"dst": "0.0.0.0/0"}]}
}
CONF
	"$BIN" network create "$work/net.conf" >/dev/null

	# (a) one sleeper, connect then disconnect, 50 times (after one warm-up).
	log "sequential connect/disconnect x50"
	new_sleeper
	s=$SLEEPER
	"$BIN" network connect "$s" "$net" >/dev/null
	"$BIN" network disconnect "$s" "$net" >/dev/null
	for _ in $(seq 50); do
		timed "$work/a.connect" "$BIN" network connect "$s" "$net"
		timed "$work/a.disconnect" "$BIN" network disconnect "$s" "$net"
	done
	read -r cmed cp95 cmin cmax < <(stats "$work/a.connect")
	read -r dmed dp95 dmin dmax < <(stats "$work/a.disconnect")
	# What a process costs before it does anything.
	for _ in $(seq 20); do
		timed "$work/a.version" "$BIN" version
		timed "$work/a.list" "$BIN" network list
	done
	read -r vmed vp95 vmin vmax < <(stats "$work/a.version")
	read -r lmed lp95 lmin lmax < <(stats "$work/a.list")
	# Where the time goes: 10 more pairs through wrappers that log each
	# plugin's wall time (bridge's includes host-local's, which it runs).
	mkdir "$work/wrap"
	for p in "$CNI_PATH"/*; do
		cat >"$work/wrap/${p##*/}" <<WRAP
#!/usr/bin/env bash
LC_ALL=C
t0=\${EPOCHREALTIME/./}
"$p" "\$@"
rc=\$?
t1=\${EPOCHREALTIME/./}
echo \$((t1 - t0)) >>"$work/plugin.${p##*/}.\$CNI_COMMAND"
exit \$rc
WRAP
		chmod +x "$work/wrap/${p##*/}"
	done
	for _ in $(seq 10); do
		"$BIN" --cni-path "$work/wrap" network connect "$s" "$net" >/dev/null
		"$BIN" --cni-path "$work/wrap" network disconnect "$s" "$net" >/dev/null
	done

	# (b) 30 sleepers, 30 connects started at once, then 30 disconnects.
	log "30 concurrent connects, then 30 concurrent disconnects"
	par=()
	for _ in $(seq 30); do new_sleeper; par+=("$SLEEPER"); done
	burst() { # burst VERB: wall ms and failures of 30 concurrent VERBs
		local verb=$1 t0 t1 fails=0 pids=() p
		t0=${EPOCHREALTIME/./}
		for p in "${par[@]}"; do
			"$BIN" network "$verb" "$p" "$net" >"$work/b.$verb.$p" 2>&1 &
			pids+=($!)
		done
		for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
		t1=${EPOCHREALTIME/./}
		echo "$(((t1 - t0) / 1000)) $fails"
	}
	read -r bconn bconnfail < <(burst connect)
	peers=$("$BIN" network inspect "$net" | grep -c '"containerID"' || true)
	read -r bdisc bdiscfail < <(burst disconnect)
	if [ "$bconnfail" != 0 ] || [ "$bdiscfail" != 0 ]; then
		log "failures in the concurrent bursts:"
		grep -h . "$work"/b.* | grep -v '^connected\|^disconnected' | sort | uniq -c >&2 || true
	fi

	# (c) peak RSS and binary size.
	log "peak RSS"
	if [ ! -x /usr/bin/time ]; then
		apt-get install -y time >/dev/null
	fi
	rss() { /usr/bin/time -f %M -o "$work/rss" "$@" >/dev/null && cat "$work/rss"; }
	rss_conn=$(rss "$BIN" network connect "$s" "$net")
	rss_disc=$(rss "$BIN" network disconnect "$s" "$net")
	rss_list=$(rss "$BIN" network list)
	rss_ver=$(rss "$BIN" version)
	size=$(stat -c %s "$BIN")
	# A dynamic ELF names its loader (PT_INTERP) near the start of the file.
	static="static"
	if head -c 8192 "$BIN" | grep -qa 'ld-linux'; then
		static="NOT static: not the binary \`make build\` makes"
	fi

	# (d) lb add latency with 1, 100 and 1000 nftables services, in a
	# network namespace of its own (nftables is per namespace).
	log "lb add with 1, 100, 1000 services (takes a minute)"
	ip netns add "$lbns"
	lb_phase() { # runs inside $lbns; prints "N add_median remove_median create_median"
		local C=("$BIN" --state "$work/lbstate") n=0 size i
		for size in 1 100 1000; do
			rm -f "$work/d.create.$size"
			while [ "$n" -lt "$size" ]; do
				# 10.210.250.1-250, ports 8000+: 1000 distinct VIPs in one /24.
				if [ "$n" -ge $((size - 20)) ]; then
					timed "$work/d.create.$size" "${C[@]}" lb create "s$n" "10.210.250.$((1 + n % 250)):$((8000 + n / 250))" --backend nftables
				else
					"${C[@]}" lb create "s$n" "10.210.250.$((1 + n % 250)):$((8000 + n / 250))" --backend nftables >/dev/null
				fi
				n=$((n + 1))
			done
			for i in $(seq 20); do
				timed "$work/d.add.$size" "${C[@]}" lb add s0 "10.210.205.$i:80"
				timed "$work/d.remove.$size" "${C[@]}" lb remove s0 "10.210.205.$i:80"
			done
			echo "$size $(stats "$work/d.add.$size" | cut -d' ' -f1) $(stats "$work/d.remove.$size" | cut -d' ' -f1) $(stats "$work/d.create.$size" | cut -d' ' -f1)"
		done
		t0=${EPOCHREALTIME/./}
		for i in $(seq 0 $((n - 1))); do "${C[@]}" lb delete "s$i" >/dev/null; done
		t1=${EPOCHREALTIME/./}
		echo "deleted $n $(((t1 - t0) / 1000))"
	}
	export -f lb_phase timed stats
	export BIN work
	ip netns exec "$lbns" bash -c 'set -euo pipefail; lb_phase' >"$work/d.out"
	left=$(ip netns exec "$lbns" "$BIN" --state "$work/lbstate" lb list -q | wc -l)
	ip netns del "$lbns"

	say ""
	say "## End to end (bin/circuit, bridge + host-local + ipMasq, CNI plugins from bin/cni)"
	say ""
	say "| what | median | p95 | min | max |"
	say "| --- | --- | --- | --- | --- |"
	say "| \`network connect\`, one sleeper, 50 runs | $cmed ms | $cp95 ms | $cmin ms | $cmax ms |"
	say "| \`network disconnect\`, one sleeper, 50 runs | $dmed ms | $dp95 ms | $dmin ms | $dmax ms |"
	say "| \`circuit version\` (process start and exit), 20 runs | $vmed ms | $vp95 ms | $vmin ms | $vmax ms |"
	say "| \`network list\` (start, one View, exit), 20 runs | $lmed ms | $lp95 ms | $lmin ms | $lmax ms |"
	for f in "$work"/plugin.bridge.ADD "$work"/plugin.host-local.ADD "$work"/plugin.bridge.DEL "$work"/plugin.host-local.DEL; do
		[ -s "$f" ] || continue
		read -r pmed pp95 pmin pmax < <(stats "$f")
		n=${f##*/plugin.}
		say "| plugin ${n%.*} ${n##*.} ($(wc -l <"$f") runs, timed by a wrapper) | $pmed ms | $pp95 ms | $pmin ms | $pmax ms |"
	done
	say ""
	say "| what | wall time | failed |"
	say "| --- | --- | --- |"
	say "| 30 \`network connect\` started at once (30 sleepers; $peers peers recorded) | $bconn ms | $bconnfail |"
	say "| 30 \`network disconnect\` started at once | $bdisc ms | $bdiscfail |"
	say ""
	say "| process | peak RSS |"
	say "| --- | --- |"
	say "| \`circuit network connect\` | $rss_conn KiB |"
	say "| \`circuit network disconnect\` | $rss_disc KiB |"
	say "| \`circuit network list\` | $rss_list KiB |"
	say "| \`circuit version\` | $rss_ver KiB |"
	say ""
	say "bin/circuit: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f MiB", s / 1048576 }'), $static)."
	say ""
	say "| nftables services | \`lb add\` median (20) | \`lb remove\` median (20) | \`lb create\` median (the last min(N, 20) creates) |"
	say "| --- | --- | --- | --- |"
	while read -r sz add rem cre; do
		[ "$sz" = deleted ] && { lbdel="$add services deleted in $rem ms"; continue; }
		say "| $sz | $add ms | $rem ms | $cre ms |"
	done <"$work/d.out"
	say ""
	say "${lbdel:-}; services left: $left."
fi

say ""
say "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

cat "$report"
if [ -n "$report_file" ]; then
	cp "$report" "$report_file"
fi
