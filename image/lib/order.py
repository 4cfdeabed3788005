#!/usr/bin/env python3
"""order.py PROFILE_TEXT TRACE...: the linker's function order for the image's marketbox.
order.py --resolve SYMBOLS ORDER: that order in the names a build's own symbols carry.

Prints one symbol name per line, for LLD's --symbol-ordering-file (image/lib/common.sh,
board_cargo), which places those functions first in the program's code, in this order, and
everything else after them. What the box runs then sits together, so the pages the kernel maps
around each fault (64 KiB at a time) hold code that runs rather than code that never does.

PROFILE_TEXT: the training's merged profile as text (`llvm-profdata merge --text`): the
functions of the Rust crates that ran, hottest first (by their largest counter). A name a
crate-local function carries is prefixed there with its codegen unit and ';', which the
symbol does not have.

TRACE: qemu-user's log of the blocks it translated (`-d in_asm`) while it ran the
instrumented build: a block's first line is `IN: <symbol>`. It names what the profile cannot:
the standard library's precompiled code, the C library, ring's C and assembly. Those follow,
in the order they first ran.

A name that the optimised build does not have (inlined there, or merged with an identical
function) is ignored by the linker (--no-warn-symbol-ordering).

--resolve: thin LTO renames a local function that it shares between modules to
`<name>.llvm.<number>`, a number the instrumented build does not share. SYMBOLS is the
optimised build's `nm --defined-only`; each name of ORDER that it lacks is replaced by the
renamed symbols that carry it, in place. And the C library picks its string functions for
the CPU it runs on (`__memmove_avx512_unaligned_erms` on one x86-64, `__memmove_sse2_...`
under qemu): a variant that ran in the training brings its whole family along.
"""

import re
import sys

RENAMED = re.compile(r"\.llvm\.\d+$")
# glibc's variants of one string function: `__<function>_<variant>`.
VARIANT = re.compile(r"^(__(?:mem|str|stp|wmem|wcs|rawmem)[a-z0-9]*_)[a-z0-9_]+$")


def profiled(path):
    """(largest count, name) of every function with a count above zero."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.rstrip("\n") for line in f]
    i, n = 0, len(lines)
    while i < n:
        name = lines[i]
        if not name or name.startswith("#") or name.startswith(":"):
            i += 1
            continue
        # name, then '# Func Hash:' hash, '# Num Counters:' count, '# Counter Values:' values
        values = [v for v in lines[i + 1 : i + 7] if v and not v.startswith("#")]
        try:
            counters = int(values[1])
        except (IndexError, ValueError):
            i += 1
            continue
        j = i + 1
        numbers = []
        while j < n and len(numbers) < counters + 2:
            if lines[j] and not lines[j].startswith("#"):
                numbers.append(lines[j])
            j += 1
        try:
            counts = [int(v) for v in numbers[2:]]
        except ValueError:
            counts = []
        if counts and max(counts) > 0:
            out.append((max(counts), name.rsplit(";", 1)[-1]))
        # Skip the rest of the record (value profile data) up to the blank line.
        while j < n and lines[j]:
            j += 1
        i = j
    out.sort(key=lambda c: (-c[0], c[1]))
    return [name for _, name in out]


def traced(paths):
    """Symbol names of the translated blocks, in the order they first appear."""
    seen = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("IN:"):
                    name = line[3:].strip()
                    if name:
                        seen.append(name)
    return seen


def resolve(symbols_path, order_path):
    """ORDER's names as the symbols of SYMBOLS (`nm --defined-only` lines) spell them."""
    exact, renamed = set(), {}
    with open(symbols_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) != 3:
                continue
            name = fields[2]
            exact.add(name)
            base = RENAMED.sub("", name)
            if base != name:
                renamed.setdefault(base, []).append(name)
    out, listed = [], set()

    def add(names):
        for name in names:
            if name not in listed:
                listed.add(name)
                out.append(name)

    with open(order_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            name = line.strip()
            add([name] if name in exact else renamed.get(name, []))
            family = VARIANT.match(name)
            if family:
                add(sorted(n for n in exact if n.startswith(family.group(1))))
    return out


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--resolve":
        names = resolve(sys.argv[2], sys.argv[3])
        if not names:
            sys.exit("order.py: no function of the order is in the build")
        sys.stdout.write("\n".join(names) + "\n")
        return
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: order.py PROFILE_TEXT [TRACE...] | order.py --resolve SYMBOLS ORDER")
    names, listed = [], set()
    for name in profiled(sys.argv[1]) + traced(sys.argv[2:]):
        if name not in listed:
            listed.add(name)
            names.append(name)
    if not names:
        sys.exit("order.py: no function ran in the training")
    sys.stdout.write("\n".join(names) + "\n")


if __name__ == "__main__":
    main()
