#!/usr/bin/env python3
"""The man pages' names for libmp's public functions, read from the public headers.

Each public function (declared with MP_EXTERN) belongs to the page of its area: the page of
its per-area header, or for <mp.h> the page of its banner section ("/* === processes === */").
  manlinks.py list HEADER...            the function names, one a line
  manlinks.py write OUTDIR HEADER...    OUTDIR/<function>.3, a ".so" page naming its area's page
  manlinks.py check MANDIR HEADER...    fails when a function's area has no page in MANDIR
                                        (<page>.3.scd), or the page does not name the function
"""
import os
import re
import sys

# Area of each header (by file name); for mp.h, of each of its banner sections.
HEADER_PAGES = {
    "connection.h": "mp_connection",
    "queues.h": "mp_queue",
    "synchronize.h": "mp_synchronize",
    "sharedctypes.h": "mp_sharedctypes",
    "shared_memory.h": "mp_shared_memory",
    "pool.h": "mp_pool",
    "trace.h": "mp_trace",
}
SECTION_PAGES = {
    "errors": "mp_errors",
    "version": "libmp",
    "contexts and start methods": "mp_context",
    "processes": "mp_process",
}

BANNER = re.compile(r"^/\* =+ (.+?) =+ \*/$", re.M)
FUNCTION = re.compile(r"\bMP_EXTERN\b[^;(]*?\b(mp_\w+)\s*\(")


def functions(header):
    """(function, page or None) for each public function of a header, in order."""
    with open(header, encoding="utf-8") as f:
        text = f.read()
    name = os.path.basename(header)
    banners = [(m.start(), m.group(1)) for m in BANNER.finditer(text)]
    for m in FUNCTION.finditer(text):
        if name in HEADER_PAGES:
            page = HEADER_PAGES[name]
        else:
            section = [title for start, title in banners if start < m.start()]
            page = SECTION_PAGES.get(section[-1]) if section else None
        yield m.group(1), page


def all_functions(headers):
    return [pair for header in headers for pair in functions(header)]


def main(argv):
    if len(argv) >= 2 and argv[1] == "list":
        for function, page in all_functions(argv[2:]):
            if page:
                print(function)
        return 0
    if len(argv) >= 3 and argv[1] == "write":
        for function, page in all_functions(argv[3:]):
            if page:
                with open(os.path.join(argv[2], function + ".3"), "w", encoding="utf-8") as f:
                    f.write(".so man3/%s.3\n" % page)
        return 0
    if len(argv) >= 3 and argv[1] == "check":
        missing = []
        pages = {}
        for function, page in all_functions(argv[3:]):
            if not page:
                missing.append("%s: its header or section has no man page (manlinks.py)"
                               % function)
                continue
            path = os.path.join(argv[2], page + ".3.scd")
            if page not in pages:
                try:
                    with open(path, encoding="utf-8") as f:
                        pages[page] = f.read()
                except OSError:
                    pages[page] = None
            if pages[page] is None:
                missing.append("%s: no page %s" % (function, path))
            elif not re.search(r"\b%s\b" % function, pages[page]):
                missing.append("%s: not named in %s" % (function, path))
        for line in missing:
            print(line)
        print("%d functions checked, %d without a man page"
              % (len(all_functions(argv[3:])), len(missing)))
        return 1 if missing else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
