# The tutorial's exercises (docs/tutorial/exercises): every check is real. Built from the
# reference solutions, each exercise passes its check under every start method; built from
# the untouched skeletons, each one's check fails. Also compiles every C example of the
# chapters against the library and runs it. About 2 to 3 minutes on this loaded 2-core machine
# (two builds of the library and the exercises only; the skeletons' checks wait out their
# timeouts: a deadlock, consumers without a pill).

# Only the exercises are built (the test suites are the README run's business).
exercises=$(sed -n "s/^    '\(ex_[0-9a-z_]*\)',$/\1/p" docs/tutorial/exercises/meson.build)
{ [ -d build-exercises ] || meson setup build-exercises -Dwerror=true -Ddemos=false \
    -Dexercise_solutions=true >/dev/null; }
meson compile -C build-exercises $exercises >/dev/null
meson test -C build-exercises --no-rebuild --suite exercises --print-errorlogs

{ [ -d build-skeletons ] || meson setup build-skeletons -Dwerror=true -Ddemos=false >/dev/null; }
meson compile -C build-skeletons $exercises >/dev/null
skeletons_passed=0
for exe in build-skeletons/docs/tutorial/exercises/ex_*; do
  [ -x "$exe" ] && [ -f "$exe" ] || continue
  if "$exe" >/dev/null 2>&1; then
    echo "exercises: the untouched skeleton $(basename "$exe") passes its check"
    skeletons_passed=$((skeletons_passed + 1))
  fi
done
[ "$skeletons_passed" -eq 0 ]
# The plain test run (the README's) must not include them.
if meson test -C build-skeletons --list 2>/dev/null | grep -q exercises; then
  echo "exercises: the default meson test run includes the exercises"
  false
fi

# Every ```c block of the chapters is a whole program: compile each against the library and
# run it (each ends by itself within seconds).
snippets=$(mktemp -d)
for chapter in docs/tutorial/[0-9]*.md; do
  awk -v out="$snippets/$(basename "$chapter" .md)" \
    '/^```c$/ { n++; f = out "-" n ".c"; on = 1; next } /^```$/ { on = 0 } on { print > f }' \
    "$chapter"
done
for snippet in "$snippets"/*.c; do
  [ -f "$snippet" ] || continue
  cc -std=gnu11 -Wall -Wextra -Wpedantic -Werror -D_GNU_SOURCE -pthread -Iinclude \
    -Ibuild-exercises/include "$snippet" \
    -Lbuild-exercises/lib -lmp -lm -Wl,-rpath,"$PWD/build-exercises/lib" -o "${snippet%.c}"
  timeout 120 "${snippet%.c}" >/dev/null
done
echo "exercises: $(ls -d build-exercises/docs/tutorial/exercises/ex_* | grep -vc '\.p$') checks pass" \
  "with the solutions and fail with the skeletons; $(ls "$snippets"/*.c 2>/dev/null | wc -l)" \
  "chapter examples compile and run"
rm -rf "$snippets"
