# Shared by rcS, rcK and supervise (sourced, not run).
#
# Owns: how the init talks on the console (one "marketbox-init: " prefix, so a person and
# the boot test can tell the init's lines from the service's), where the data partition and
# the config live, and the board facts the build wrote to /etc/marketbox/board.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# CONSOLE, BAUD, BOARD, VERSION: written by image/build.
. /etc/marketbox/board

DATA=/data
CONFIG=$DATA/marketbox.toml
DEFAULT_CONFIG=/usr/share/marketbox/marketbox.toml
RUN=/run/marketbox

say() {
	# \r\n: the console may still be in marketbox's raw mode, where \n alone does not
	# return the carriage.
	printf 'marketbox-init: %s\r\n' "$*" >/dev/console
}

# Seconds since boot: unlike the wall clock, it never jumps.
uptime_s() {
	read -r up _ </proc/uptime
	echo "${up%%.*}"
}

# The root filesystem's device, from mbx.root=UUID=... on the kernel command line.
root_device() {
	for arg in $(cat /proc/cmdline); do
		case $arg in
		mbx.root=*) findfs "${arg#mbx.root=}" 2>/dev/null && return 0 ;;
		esac
	done
	return 1
}

# The data partition: the GPT partition named mbx-data on the disk the root came from
# (names rather than numbers: /dev/vda3, /dev/mmcblk0p3 and /dev/nvme0n1p3 alike).
data_device() {
	dev=$(root_device) || return 1
	part=${dev#/dev/}
	disk=$(readlink -f "/sys/class/block/$part/..")
	disk=${disk##*/}
	for p in /sys/block/"$disk"/"$disk"*; do
		[ -f "$p/uevent" ] || continue
		if grep -qx 'PARTNAME=mbx-data' "$p/uevent"; then
			echo "/dev/${p##*/}"
			return 0
		fi
	done
	return 1
}
