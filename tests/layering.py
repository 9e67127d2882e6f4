#!/usr/bin/env python3
"""Circles between libmp's lib/*.c files, read from the object files' symbols.

usage: layering.py BUILD_DIR [-v]

For every lib/*.c object of the library (BUILD/lib/libmp.so*.p/ or the static library's
BUILD/lib/libmp.a.p/), `nm --defined-only` gives the symbols it defines and `nm -u` those it
uses; each used symbol defined by another lib file is an edge from the user to the definer.
Every strongly connected component of more than one file is a circle: it is printed with the
symbols behind each of its edges, and the exit status is 1. Issue 13: "no circle between
files". Exit 77 (meson's "skipped") when nm is missing, 2 when no object is found.
-v also prints every edge of the graph.
"""

import os
import re
import shutil
import subprocess
import sys


def objects(build):
    """{file stem: object path} of lib/*.c, from the shared library's objects or the static's."""
    libdir = os.path.join(build, "lib")
    subs = sorted(os.listdir(libdir)) if os.path.isdir(libdir) else []
    # The shared library's objects first (its folder carries the version: libmp.so.0.1.0.p),
    # then the static library's (a static-only build).
    for sub in [s for s in subs if re.fullmatch(r"libmp\.so[.0-9]*\.p", s)] + ["libmp.a.p"]:
        d = os.path.join(libdir, sub)
        if not os.path.isdir(d):
            continue
        found = {}
        for name in sorted(os.listdir(d)):
            # meson names lib/foo.c's object "foo.c.o" (older versions: "lib_foo.c.o").
            m = re.fullmatch(r"(?:lib_)?(.+)\.c\.o", name)
            if m:
                found[m.group(1)] = os.path.join(d, name)
        if found:
            return found
    return {}


def nm(args, path):
    out = subprocess.run(["nm", *args, path], check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if not parts:
            continue
        kind, name = (parts[-2], parts[-1]) if len(parts) >= 2 else ("U", parts[0])
        # Local symbols (t, d, b, r...) are a file's statics: not a door between files.
        if "--defined-only" in args and not kind.isupper():
            continue
        names.add(name)
    return names


def sccs(nodes, edges):
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(sorted(comp))
    return out


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 2
    build, verbose = argv[1], "-v" in argv[2:]
    if shutil.which("nm") is None:
        print("layering: nm is missing: skipped")
        return 77
    objs = objects(build)
    if not objs:
        print(f"layering: no lib/*.c object under {build}/lib/libmp.so*.p or libmp.a.p")
        return 2
    defined, used = {}, {}
    for stem, path in objs.items():
        defined[stem] = nm(["--defined-only"], path)
        used[stem] = nm(["-u"], path)
    owner = {}
    for stem, names in defined.items():
        for name in names:
            owner.setdefault(name, stem)
    # edges[a][b]: the symbols a uses that b defines.
    edges = {}
    for stem, names in used.items():
        for name in names:
            b = owner.get(name)
            if b is not None and b != stem:
                edges.setdefault(stem, {}).setdefault(b, set()).add(name)
    if verbose:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{a} -> {b}: {', '.join(sorted(edges[a][b]))}")
    circles = [c for c in sccs(sorted(objs), edges) if len(c) > 1]
    for comp in circles:
        print("circle: " + " ".join(comp))
        members = set(comp)
        for a in comp:
            for b in sorted(edges.get(a, {})):
                if b in members:
                    print(f"  {a} -> {b}: {', '.join(sorted(edges[a][b]))}")
    if circles:
        print(f"layering: {len(circles)} circle(s) between lib files")
        return 1
    print(f"layering: {len(objs)} lib files, no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
