#!/usr/bin/env python3
"""The library's fork-child handlers and exit hooks are child text (issue 14).

usage: child_text.py SOURCE_DIR BUILD_DIR

Every child of a fork() in a program linked with libmp runs the library's pthread_atfork
child handlers, and every child libmp starts runs the exit hooks (mp__on_exit). fork() does
not copy the page tables of code, so each 64 KiB window of code a child runs costs it a page
fault: the handlers and hooks belong in the section MP__CHILD_TEXT names, beside the rest of
the child's code (docs/architecture.md, "Where the time goes").

For every lib/*.c, the handlers (pthread_atfork's third argument) and hooks (mp__on_exit's
first) are read from the source, and the object file's symbol table (objdump -t) must place
each in that section. Prints every one that is elsewhere and exits 1. Exit 77 (meson's
"skipped") when objdump is missing, 2 when no object is found.
"""

import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layering import objects  # noqa: E402 (the same objects the layering test reads)

SECTION = ".text.hot.mp_child"

ATFORK = re.compile(r"pthread_atfork\(\s*[^,()]+,\s*[^,()]+,\s*(\w+)\s*\)")
ON_EXIT = re.compile(r"mp__on_exit\(\s*(\w+)\s*,")


def sections(obj):
    """{function name: section} of an object's functions; a compiler's clone (name.part.0,
    name.isra.0) under its own name too, unless the name itself is there."""
    out = subprocess.run(["objdump", "-t", obj], check=True, capture_output=True,
                         text=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"[0-9a-f]+\s+.{7}\s+(\S+)\s+[0-9a-f]+\s+(\S+)$", line)
        if m and " F " in line:
            section, name = m.groups()
            found[name] = section
            found.setdefault(name.split(".")[0], section)
    return found


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, build = sys.argv[1], sys.argv[2]
    if shutil.which("objdump") is None:
        print("objdump not found: skipped")
        sys.exit(77)
    objs = objects(build)
    if not objs:
        print(f"no lib/*.c object under {build}/lib")
        sys.exit(2)
    wrong = []
    checked = 0
    for stem, obj in sorted(objs.items()):
        path = os.path.join(src, "lib", stem + ".c")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        names = set(ATFORK.findall(text)) | set(ON_EXIT.findall(text))
        names -= {"NULL"}
        if not names:
            continue
        where = sections(obj)
        for name in sorted(names):
            checked += 1
            if where.get(name) != SECTION:
                wrong.append(f"lib/{stem}.c: {name} is in {where.get(name, 'no section')}, "
                             f"not {SECTION} (mark it MP__CHILD_TEXT)")
    for line in wrong:
        print(line)
    print(f"{checked} handlers and hooks checked, {len(wrong)} outside {SECTION}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
