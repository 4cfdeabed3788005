"""Which kernel module files a board needs: `modules.py MODULES_DIR NAME...`.

Prints, one per line, the paths (relative to MODULES_DIR, i.e. lib/modules/<version>) of the
named modules and everything they depend on, from the kernel's modules.dep, modules.softdep
and modules.alias (run `depmod -b` on the unpacked package first): ext4 asks for
`crypto-crc32c` only as a soft dependency, and without it the root does not mount. A name that is
built into the kernel is skipped with a note on stderr; a name the kernel has neither as a
module nor built in is an error, so a typo in board.toml fails the build instead of the boot.
`-` and `_` are the same in module names, as modprobe treats them.
"""

import pathlib
import sys


def norm(name):
    return name.replace("-", "_")


def stem(path):
    name = path.rsplit("/", 1)[-1]
    for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if name.endswith(ext):
            return norm(name[: -len(ext)])
    return norm(name)


def closure(moddir, names):
    deps = {}
    by_name = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        by_name[stem(path)] = path
    builtin = {stem(p) for p in (moddir / "modules.builtin").read_text().split()}
    aliases = {}
    for line in (moddir / "modules.alias").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias":
            aliases.setdefault(norm(parts[1]), []).append(norm(parts[2]))
    softdeps = {}
    for line in (moddir / "modules.softdep").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0] == "softdep":
            softdeps[norm(parts[1])] = [w for w in parts[2:] if w not in ("pre:", "post:")]
    out, notes, unknown = [], [], []

    def add(name, wanted):
        key = norm(name)
        if key in by_name:
            path = by_name[key]
            for p in [path] + deps[path]:
                if p in out:
                    continue
                out.append(p)
                for soft in softdeps.get(stem(p), []):
                    add(soft, False)
        elif key in aliases:
            for target in aliases[key]:
                add(target, wanted)
        elif key in builtin:
            if wanted:
                notes.append(name)
        elif wanted:
            unknown.append(name)

    for name in names:
        add(name, True)
    return out, notes, unknown


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: modules.py MODULES_DIR NAME...")
    moddir = pathlib.Path(sys.argv[1])
    out, notes, unknown = closure(moddir, sys.argv[2:])
    if unknown:
        sys.exit(f"error: kernel {moddir.name} has no module {', '.join(unknown)} (board.toml modules)")
    if notes:
        print(f"modules built into kernel {moddir.name} (nothing to copy): {', '.join(notes)}",
              file=sys.stderr)
    print("\n".join(out))


if __name__ == "__main__":
    main()
