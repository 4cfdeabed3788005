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
#
# The steady run also gives the linker its function order ($PGO_ORDER, image/lib/order.py): it
# runs under qemu-user on every board (natively built boards too), which logs each block of
# code it translates (`-d in_asm`), so the order names what the box runs beyond the profile's
# Rust functions: the standard library's precompiled code, the C library, ring's assembly.

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

# pgo_train: writes $PGO_PROFILE and $PGO_ORDER.
pgo_train() {
	local llvm raw=$PGO_DIR/raw harness bin how=natively
	llvm=$(rustc_llvm)
	# The profile format is LLVM's own: merged by the same LLVM major version as rustc's.
	ensure_packages "llvm-$llvm" "lld-$llvm" qemu-user-static
	rm -rf "$raw" "$PGO_PROFILE" "$PGO_ORDER" "$PGO_LINK_ORDER"
	mkdir -p "$raw"
	harness=$(pgo_harness)
	[ -x "$harness" ] || die "no firehose benchmark executable (got '$harness')"
	log "profile-guided optimisation: an instrumented build for $BOARD_TARGET"
	# The same cargo profile (thin LTO included) as the build it trains: an instrumented
	# build without LTO gave a profile whose optimised build measured no faster than a plain
	# one (6.37-7.36 against 6.49-7.14 us per firehose message, x86-64).
	PGO_GENERATE=$raw BOARD_TARGET_DIR=$PGO_DIR/target \
		board_cargo build --release --quiet --bin marketbox
	# What the bench starts: the instrumented binary, under qemu-user when foreign; for the
	# steady run always under qemu-user, logging the code it runs.
	local built=$PGO_DIR/target/$BOARD_TARGET/release/marketbox trace=$PGO_DIR/trace.log
	local runner=
	[ $CROSS = yes ] && runner=$QEMU_USER how="under $QEMU_USER"
	printf '#!/bin/sh\nexec %s %s "$@"\n' "$runner" "$built" >"$PGO_DIR/marketbox-firehose"
	printf '#!/bin/sh\nexec %s -d in_asm -D %s %s "$@"\n' "$QEMU_USER" "$trace" "$built" \
		>"$PGO_DIR/marketbox-steady"
	chmod +x "$PGO_DIR/marketbox-firehose" "$PGO_DIR/marketbox-steady"
	log "training it on the firehose ($how) and steady (under $QEMU_USER) benchmarks (about a minute)"
	: >"$PGO_DIR/training.log"
	rm -f "$trace"
	local run
	for run in firehose steady; do
		bin=$PGO_DIR/marketbox-$run
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
	[ -s "$trace" ] || die "the steady training run under $QEMU_USER logged no code ($trace)"
	"llvm-profdata-$llvm" merge --text --output="$PGO_DIR/profile.txt" "$PGO_PROFILE"
	python3 image/lib/order.py "$PGO_DIR/profile.txt" "$trace" >"$PGO_ORDER.new" ||
		die "cannot order the functions (image/lib/order.py)"
	mv "$PGO_ORDER.new" "$PGO_ORDER"
	rm -f "$trace" "$PGO_DIR/profile.txt"
	log "function order: $(wc -l <"$PGO_ORDER") functions that ran, for the linker"
}

# pgo_link: after `board_cargo build --release`, builds marketbox again with the functions that
# ran in the training first, together, in $PGO_ORDER's order (LLD's --symbol-ordering-file).
# The order is first resolved against the built binary's own symbols ($PGO_LINK_ORDER): thin
# LTO renames the local functions it shares between modules (`name.llvm.<number>`), and the
# number is not the instrumented build's; unresolved, 258 of the x86-64 build's functions that
# ran (72 kB, small ones, over some 20 of its 64-KiB windows) would stay where they were. The
# second build has the same code, so the same names; it is a build of everything again
# (`cargo rustc` could relink the last crate alone, but refuses a static target's
# proc-macros), and board_cargo keeps the order's flags from then on, so cross-test shares it.
pgo_link() {
	local bin=$WORK/$BOARD_TARGET/release/marketbox nm=nm placed
	[ $CROSS = yes ] && nm=$GNU-nm
	[ -f "$PGO_ORDER" ] || die "$PGO_PROFILE has no function order beside it ($PGO_ORDER): train again"
	"$nm" --defined-only "$bin" >"$PGO_DIR/symbols.txt" || die "cannot list the symbols of $bin"
	python3 image/lib/order.py --resolve "$PGO_DIR/symbols.txt" "$PGO_ORDER" >"$PGO_LINK_ORDER.new" ||
		die "cannot resolve the function order (image/lib/order.py)"
	mv "$PGO_LINK_ORDER.new" "$PGO_LINK_ORDER"
	log "building marketbox again, linked with $(wc -l <"$PGO_LINK_ORDER") functions that ran in the training first"
	board_cargo build --release --quiet --bin marketbox
	"$nm" --defined-only "$bin" >"$PGO_DIR/symbols.txt" || die "cannot list the symbols of $bin"
	placed=$(python3 image/lib/order.py --resolve "$PGO_DIR/symbols.txt" "$PGO_LINK_ORDER" | wc -l)
	log "$placed of the $(wc -l <"$PGO_LINK_ORDER") ordered functions are in it by those names"
	rm -f "$PGO_DIR/symbols.txt"
}
