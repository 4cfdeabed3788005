# Sourced by image/build and image/cross-test (bash) after `cd` to the repository and with
# BOARD and ME (the script's name, for messages) set.
#
# Owns: installing build tools from Debian's packages when missing, reading the board file,
# and the cross toolchain: Debian's rustc-web/cargo-web (rustup's toolchain has only the
# host's standard library) with /usr/bin first on PATH, only inside these scripts, building
# static binaries into target/image/ so the host builds in target/ are never invalidated.
# After it: the BOARD_*, BOOT_*, PART_*, QEMU_* variables of image/lib/board.py, and HOST_ARCH,
# GNU (the GNU triple), CROSS (yes/no), QEMU_USER, WORK (target/image), PGO_DIR and
# PGO_PROFILE (per board target), HOST_CARGO, CARGO_ENV (the environment cargo needs,
# already exported) and the functions below.

REPO=$PWD
WORK=$REPO/target/image
# The host's own cargo (rustup's, say), found before Debian's goes first on PATH: it builds
# the benchmark harness that drives the training (image/lib/pgo.sh).
HOST_CARGO=$(command -v cargo || true)

log() { echo "$ME: $*" >&2; }
die() {
	echo "$ME: error: $*" >&2
	exit 1
}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian's tools first: rustup's cargo must not build for the board.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export LC_ALL=C
unset RUSTUP_TOOLCHAIN RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

# ensure_packages PACKAGE...: apt-get install what is missing (adding a foreign architecture
# to dpkg when a package names one that is not the host's, e.g. libstd-rust-web-dev:arm64).
ensure_packages() {
	local missing=() p arch
	for p in "$@"; do installed "$p" || missing+=("$p"); done
	[ ${#missing[@]} -eq 0 ] && return 0
	for p in "${missing[@]}"; do
		arch=${p#*:}
		if [ "$arch" != "$p" ] && [ "$arch" != "$(dpkg --print-architecture)" ] &&
			! dpkg --print-foreign-architectures | grep -qx "$arch"; then
			log "adding the $arch architecture to dpkg"
			as_root dpkg --add-architecture "$arch"
		fi
	done
	log "installing ${missing[*]}"
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/dev/null
}

{ installed python3 && python3 -c 'import tomllib' 2>/dev/null; } || ensure_packages python3
vars=$(python3 image/lib/board.py "$BOARD") || exit 1
eval "$vars"

# Profile-guided optimisation (image/build trains an instrumented build, image/lib/pgo.sh):
# when the merged profile exists, board_cargo optimises with it, so image/cross-test after
# image/build tests the code the image ships and shares its build of the dependencies.
PGO_DIR=$WORK/pgo/$BOARD_TARGET
PGO_PROFILE=$PGO_DIR/marketbox.profdata
PGO_ORDER=$PGO_DIR/marketbox.order
PGO_LINK_ORDER=$PGO_DIR/link.order

# The major version of the LLVM that /usr/bin/rustc is built on (its profile format; the
# llvm-N and lld-N packages of the same version go with it).
rustc_llvm() {
	local v
	v=$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
	[ -n "$v" ] || die "cannot tell the LLVM version of /usr/bin/rustc"
	echo "$v"
}

HOST_ARCH=$(dpkg --print-architecture)
case $BOARD_ARCH in
arm64) GNU=aarch64-linux-gnu QEMU_USER=qemu-aarch64-static ;;
amd64) GNU=x86_64-linux-gnu QEMU_USER=qemu-x86_64-static ;;
esac
CROSS=no
if [ "$BOARD_ARCH" != "$HOST_ARCH" ]; then
	CROSS=yes
	[ "$HOST_ARCH" = amd64 ] || die "cross-building from $HOST_ARCH is not set up (amd64 hosts only)"
fi

# The packages the Rust cross-build needs.
toolchain_packages() {
	echo rustc-web cargo-web "libstd-rust-web-dev:$BOARD_ARCH"
	if [ $CROSS = yes ]; then
		echo "gcc-$GNU" "libc6-dev-$BOARD_ARCH-cross" "binutils-$GNU" qemu-user-static
	else
		echo gcc libc6-dev binutils
	fi
}

# Runs a program of the board's architecture here (under qemu-user when it is foreign).
run_target() { if [ $CROSS = yes ]; then "$QEMU_USER" "$@"; else "$@"; fi; }

# cargo for the board: static (crt-static), the cross linker and C compiler (ring's assembly),
# qemu-user as the runner, so `cargo test` runs the tests on the board's architecture.
# Optimised with $PGO_PROFILE when it exists, and then linked by LLD, in $PGO_LINK_ORDER's
# function order once pgo_link (image/lib/pgo.sh) has written it; PGO_GENERATE=DIR instead
# builds instrumented, writing profiles to DIR, and BOARD_TARGET_DIR builds elsewhere than
# $WORK.
board_cargo() {
	local triple=${BOARD_TARGET//-/_}
	local TRIPLE=${triple^^}
	local flags="-C target-feature=+crt-static"
	if [ -n "${PGO_GENERATE:-}" ]; then
		flags+=" -C profile-generate=$PGO_GENERATE"
	elif [ -f "$PGO_PROFILE" ]; then
		# Named by its content: cargo rebuilds when the flags change, not when a file they
		# name does, so a new profile must be a new name.
		local sum use llvm lld
		sum=$(sha256sum "$PGO_PROFILE" | cut -c1-16)
		use=$PGO_DIR/use-$sum
		if [ ! -f "$use.profdata" ]; then
			rm -f "$PGO_DIR"/use-*.profdata
			cp "$PGO_PROFILE" "$use.profdata"
		fi
		# Cold means never run in the training, not LLVM's default (the rarest 0.0001 % of the
		# counts, which takes in the start-up code run once): the linker puts cold code first,
		# together, so code that does run at start-up no longer sits among it and the box maps
		# less of the program (x86-64, steady: 4.85 against 4.28 MB of code resident).
		flags+=" -C profile-use=$use.profdata -C llvm-args=-profile-summary-cold-count=0"
		# LLD, which can place functions in a given order (pgo_link); GNU ld cannot.
		llvm=$(rustc_llvm)
		lld=/usr/lib/llvm-$llvm/bin
		[ -x "$lld/ld.lld" ] || ensure_packages "lld-$llvm"
		flags+=" -C link-arg=-B$lld -C link-arg=-fuse-ld=lld"
		if [ -f "$PGO_LINK_ORDER" ]; then
			flags+=" -C link-arg=-Wl,--symbol-ordering-file=$PGO_LINK_ORDER"
			flags+=" -C link-arg=-Wl,--no-warn-symbol-ordering"
		fi
	fi
	export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
	export "CARGO_TARGET_${TRIPLE}_RUSTFLAGS=$flags"
	if [ $CROSS = yes ]; then
		export "CARGO_TARGET_${TRIPLE}_LINKER=$GNU-gcc" "CC_${triple}=$GNU-gcc" "AR_${triple}=$GNU-ar"
		export "CARGO_TARGET_${TRIPLE}_RUNNER=$QEMU_USER"
	fi
	/usr/bin/cargo "$@" --locked --target "$BOARD_TARGET" --target-dir "${BOARD_TARGET_DIR:-$WORK}"
}
