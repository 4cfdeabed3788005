"""Reads and checks `board/<name>/board.toml`, the one declarative file per board.

`image/build` evaluates the shell assignments this prints (`python3 image/lib/board.py
BOARD`); `image/boot-test` imports `load()`. Unknown keys, missing keys and values of the
wrong kind are errors naming the file and the key, so a typo in a board file never builds an
image that silently lacks something.
"""

import pathlib
import re
import shlex
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]

STR, INT, STRS = "a string", "an integer", "a list of strings"

# key: (kind, required)
TOP = {
    "description": (STR, True),
    "arch": (STR, True),
    "target": (STR, True),
    "kernel_package": (STR, True),
    "console": (STR, True),
    "baud": (INT, True),
    "modules": (STRS, True),
}
BOOT = {
    "method": (STR, True),
    "kernel": (STR, True),
    "cmdline": (STR, False),
    "load_address": (STR, False),
    "firmware_package": (STR, False),
    "dtbs": (STRS, False),
    "loader_package": (STR, False),
}
# What each boot method needs beyond `method` and `kernel`, and the kernel forms it takes.
METHODS = {
    "u-boot-extlinux": ({"load_address"}, {"uimage-gzip"}),
    "raspi-firmware": ({"firmware_package", "dtbs"}, {"gzip"}),
    "uefi-systemd-boot": ({"loader_package"}, {"plain"}),
}
PARTITIONS = {"boot": (INT, True), "root": (INT, True), "data": (INT, True)}
QEMU = {
    "package": (STR, True),
    "binary": (STR, True),
    "machine": (STR, True),
    "cpu": (STR, True),
    "memory_mib": (INT, True),
    "firmware_package": (STR, True),
    "bios": (STR, True),
}
ARCHES = {"arm64", "amd64"}


class BoardError(Exception):
    pass


def _check(table, schema, where, path):
    if not isinstance(table, dict):
        raise BoardError(f"{path}: [{where}] must be a table")
    for key in table:
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise BoardError(f"{path}: unknown key {where}.{key} (known: {known})")
    for key, (kind, required) in schema.items():
        if key not in table:
            if required:
                raise BoardError(f"{path}: missing {where}.{key} ({kind})")
            continue
        value = table[key]
        ok = {
            STR: isinstance(value, str) and value != "",
            INT: isinstance(value, int) and not isinstance(value, bool),
            STRS: isinstance(value, list) and all(isinstance(v, str) and v for v in value),
        }[kind]
        if not ok:
            raise BoardError(f"{path}: {where}.{key} must be {kind}")


def load(name):
    """The board's settings as a dict, checked; raises BoardError with the reason."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise BoardError(f"board name {name!r}: use the name of a folder in board/")
    path = ROOT / "board" / name / "board.toml"
    if not path.is_file():
        known = sorted(p.parent.name for p in (ROOT / "board").glob("*/board.toml"))
        raise BoardError(f"no board {name!r} (boards: {', '.join(known)})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise BoardError(f"{path}: {err}") from None
    rel = path.relative_to(ROOT)
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key in tables:
        if key not in ("boot", "partitions", "qemu"):
            raise BoardError(f"{rel}: unknown table [{key}]")
    _check(top, TOP, "board", rel)
    _check(tables.get("boot"), BOOT, "boot", rel)
    _check(tables.get("partitions"), PARTITIONS, "partitions", rel)
    if "qemu" in tables:
        _check(tables["qemu"], QEMU, "qemu", rel)
    if data["arch"] not in ARCHES:
        raise BoardError(f"{rel}: arch {data['arch']!r} is not one of {sorted(ARCHES)}")
    if not re.fullmatch(r"tty[A-Za-z]+[0-9]+", data["console"]):
        raise BoardError(f"{rel}: console {data['console']!r} must be a tty name like ttyAMA0")
    boot = data["boot"]
    if boot["method"] not in METHODS:
        raise BoardError(f"{rel}: boot.method {boot['method']!r} is not one of {sorted(METHODS)}")
    needs, kernels = METHODS[boot["method"]]
    for key in sorted(needs):
        if key not in boot:
            raise BoardError(f"{rel}: boot.method {boot['method']!r} needs boot.{key}")
    if boot["kernel"] not in kernels:
        raise BoardError(f"{rel}: boot.kernel for {boot['method']!r} must be one of {sorted(kernels)}")
    for key, mib in data["partitions"].items():
        if not 4 <= mib <= 4096:
            raise BoardError(f"{rel}: partitions.{key} = {mib} MiB is outside 4..4096")
    data["name"] = name
    return data


def shell(board):
    """`KEY=value` lines for `eval` in image/build."""
    out = {
        "BOARD_NAME": board["name"],
        "BOARD_DESCRIPTION": board["description"],
        "BOARD_ARCH": board["arch"],
        "BOARD_TARGET": board["target"],
        "BOARD_KERNEL_PACKAGE": board["kernel_package"],
        "BOARD_CONSOLE": board["console"],
        "BOARD_BAUD": str(board["baud"]),
        "BOARD_MODULES": " ".join(board["modules"]),
    }
    for key, value in board["boot"].items():
        out["BOOT_" + key.upper()] = " ".join(value) if isinstance(value, list) else str(value)
    for key, value in board["partitions"].items():
        out["PART_" + key.upper()] = str(value)
    for key, value in board.get("qemu", {}).items():
        out["QEMU_" + key.upper()] = str(value)
    return "\n".join(f"{k}={shlex.quote(v)}" for k, v in out.items())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: board.py BOARD")
    try:
        print(shell(load(sys.argv[1])))
    except BoardError as err:
        sys.exit(f"error: {err}")
