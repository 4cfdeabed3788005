"""The files a dynamically linked program needs: `elfdeps.py SYSROOT PROGRAM...`.

SYSROOT is the unpacked Debian packages (the program's own and its libraries'); PROGRAM paths
are relative to it. Prints, one per line and relative to SYSROOT, each program, its ELF
interpreter and every shared library it needs (transitively, found in the multiarch library
directories), with the symlinks that lead to them, so that copying exactly these into the
root filesystem makes the programs run there. A library that cannot be found is an error.
"""

import os
import pathlib
import subprocess
import sys


def needed(path):
    out = subprocess.run(["readelf", "-d", "-l", "-W", str(path)], check=True,
                         capture_output=True, text=True).stdout
    libs, interp = [], None
    for line in out.splitlines():
        if "(NEEDED)" in line and "[" in line:
            libs.append(line.split("[", 1)[1].split("]", 1)[0])
        elif "Requesting program interpreter:" in line:
            interp = line.split(":", 1)[1].strip().rstrip("]")
    return interp, libs


def with_links(root, rel, out):
    """rel and, if it is a symlink, what it points to (recursively)."""
    while True:
        if rel not in out:
            out.append(rel)
        full = root / rel
        if not full.is_symlink():
            return
        target = os.readlink(full)
        base = "/" if target.startswith("/") else "/" + os.path.dirname(rel)
        rel = os.path.normpath(os.path.join(base, target)).lstrip("/")


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: elfdeps.py SYSROOT PROGRAM...")
    root = pathlib.Path(sys.argv[1])
    libdirs = sorted({str(p.parent.relative_to(root)) for p in root.glob("**/*.so*")})
    out, todo, seen = [], list(sys.argv[2:]), set()
    while todo:
        rel = todo.pop(0)
        if rel in seen:
            continue
        seen.add(rel)
        with_links(root, rel, out)
        interp, libs = needed(root / rel)
        if interp:
            with_links(root, interp.lstrip("/"), out)
        for lib in libs:
            found = [d for d in libdirs if (root / d / lib).exists()]
            if not found:
                sys.exit(f"error: {lib} (needed by {rel}) is in none of the unpacked packages")
            with_links(root, f"{found[0]}/{lib}", out)
            target = os.path.realpath(root / found[0] / lib)
            todo.append(os.path.relpath(target, root))
    print("\n".join(out))


if __name__ == "__main__":
    main()
