# Sourced by image/build after image/lib/common.sh: profile-guided optimisation of the
# image's marketbox.
#
# Owns: the instrumented build (in $PGO_DIR/target, so the image's own build in $WORK is
# never invalidated), its training, and the merged profile $PGO_PROFILE that board_cargo then
# optimises with. Must not touch: the host's builds in target/ beyond asking the host's cargo
# for the benchmark harness (a no-op after tests/run, which builds it).
#
# The training is the firehose benchmark's two workloads (benches/firehose.rs): its firehose
# of Binance spot depth diffs through the whole service into stdout (10 s), then `marketbox
# run` (20 s) with the default config's feeds (Binance spot and USD-M, OKX spot and swap: books, trades,
# funding, open interest, liquidations, ratios) on the exchange simulators. The instrumented
# binary runs on the board's architecture (under qemu-user when foreign), so the profile
# names the functions the board's build has; the harness runs natively. The benchmark stops
# marketbox with SIGTERM, on which it exits 0 and the profile is written.

# pgo_harness: the path of the firehose benchmark's executable, built by the host's cargo in
# the test profile (what `cargo test --all-targets` in tests/run already built).
pgo_harness() {
	local cargo=${HOST_CARGO:-/usr/bin/cargo} rustc json
	rustc=$(dirname "$cargo")/rustc
	[ -x "$rustc" ] || rustc=rustc
	json=$(env -u RUSTDOC RUSTC="$rustc" "$cargo" test --locked --quiet --no-run \
		--bench firehose --message-format=json) || die "cannot build the firehose benchmark"
	python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "firehose" and m.get("executable"):
        print(m["executable"])
' <<<"$json"
}

# pgo_train: writes $PGO_PROFILE.
pgo_train() {
	local llvm raw=$PGO_DIR/raw harness bin how=natively
	llvm=$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
	[ -n "$llvm" ] || die "cannot tell the LLVM version of /usr/bin/rustc"
	# The profile format is LLVM's own: merged by the same LLVM major version as rustc's.
	ensure_packages "llvm-$llvm"
	rm -rf "$raw" "$PGO_PROFILE"
	mkdir -p "$raw"
	harness=$(pgo_harness)
	[ -x "$harness" ] || die "no firehose benchmark executable (got '$harness')"
	log "profile-guided optimisation: an instrumented build for $BOARD_TARGET"
	# The same cargo profile (thin LTO included) as the build it trains: an instrumented
	# build without LTO gave a profile whose optimised build measured no faster than a plain
	# one (6.37-7.36 against 6.49-7.14 us per firehose message, x86-64).
	PGO_GENERATE=$raw BOARD_TARGET_DIR=$PGO_DIR/target \
		board_cargo build --release --quiet --bin marketbox
	# What the bench starts: the instrumented binary, under qemu-user when foreign.
	bin=$PGO_DIR/marketbox
	local runner=
	[ $CROSS = yes ] && runner=$QEMU_USER how="under $QEMU_USER"
	printf '#!/bin/sh\nexec %s %s "$@"\n' "$runner" \
		"$PGO_DIR/target/$BOARD_TARGET/release/marketbox" >"$bin"
	chmod +x "$bin"
	log "training it on the firehose and steady benchmarks ($how, about a minute)"
	: >"$PGO_DIR/training.log"
	local run
	for run in firehose steady; do
		if ! LLVM_PROFILE_FILE="$raw/$run-%p.profraw" MARKETBOX_BENCH_BIN=$bin "$harness" \
			--bench "$run" >>"$PGO_DIR/training.log" 2>&1; then
			tail -n 40 "$PGO_DIR/training.log" >&2
			die "the $run training run failed (log: $PGO_DIR/training.log)"
		fi
		compgen -G "$raw/$run-*.profraw" >/dev/null || die "the $run training wrote no profile"
	done
	# The firehose's 100,000 diffs would leave the paths a box runs at the venues' own rates
	# (OKX books, trades, funding, …: a few thousand messages in the steady run) looking cold
	# next to them; the steady run counts ten times.
	"llvm-profdata-$llvm" merge --output="$PGO_PROFILE" "$raw"/firehose-*.profraw \
		--weighted-input=10,"$(compgen -G "$raw/steady-*.profraw" | head -n 1)"
	log "profile: $(find "$raw" -name '*.profraw' | wc -l) runs merged into $(du -k "$PGO_PROFILE" | cut -f1) kB"
}
