# Packaging: libmp as packagers and other projects build it. gcc at buildtypes release and
# plain (what Debian's packaging uses), built and tested; clang at the default buildtype,
# warning-free; a meson project that has libmp as a subproject, linked dynamically and
# statically; the installed library through pkg-config, dynamically and statically (the
# README's first program and that project, each running a spawned child); the man pages
# after meson install. 10.5 minutes on this 2-core machine under load (load average 12-18),
# 7 of them the release and plain builds and tests.
# (No `a && b` lists: set -e does not stop at a failure before the last command of one.)
packaging_start=$SECONDS
apt-get install -y -qq clang scdoc man-db >/dev/null

# Runs a command with its output kept back, shown only if it fails.
packaging_quietly() {
  local log
  log=$(mktemp)
  "$@" >"$log" 2>&1 || { cat "$log"; rm -f "$log"; return 1; }
  rm -f "$log"
}

# Every test but the demos and the suites' runs without pidfds (the main build runs those),
# to keep the step short.
for buildtype in release plain; do
  [ -d "build-$buildtype" ] ||
    packaging_quietly meson setup "build-$buildtype" --buildtype="$buildtype" -Dwerror=true
  packaging_quietly meson compile -C "build-$buildtype"
  tests=$(meson test -C "build-$buildtype" --list --no-rebuild |
    grep -v -e '-no-pidfd$' -e ':demos / ' | sed 's|.* / ||')
  packaging_quietly meson test -C "build-$buildtype" --print-errorlogs $tests
  echo "packaging: gcc $buildtype: built warning-free;" \
    "$(echo $tests | wc -w) tests passed ($((SECONDS - packaging_start)) s into the step)"
done

[ -d build-clang ] || CC=clang packaging_quietly meson setup build-clang -Dwerror=true
packaging_quietly meson compile -C build-clang
echo "packaging: clang: built warning-free"

# The consumer project, with this tree as its subprojects/libmp: found by subproject() then
# dependency() and linked dynamically; found by dependency()'s fallback and linked
# statically. Each runs a spawned child.
consumer=$(mktemp -d)
cp -r tests/consumer "$consumer/src"
mkdir "$consumer/src/subprojects"
ln -s "$PWD" "$consumer/src/subprojects/libmp"
packaging_quietly meson setup "$consumer/shared" "$consumer/src" -Dfind=subproject \
  -Dwerror=true
packaging_quietly meson test -C "$consumer/shared" --print-errorlogs
[[ $(ldd "$consumer/shared/consumer") == *libmp.so* ]]
packaging_quietly meson setup "$consumer/static" "$consumer/src" --force-fallback-for=mp \
  -Ddefault_library=static -Dwerror=true
packaging_quietly meson test -C "$consumer/static" --print-errorlogs
[[ $(ldd "$consumer/static/consumer") != *libmp.so* ]]
echo "packaging: the consumer project builds libmp as a subproject, shared and static"

# Installed into a prefix: the README's first program through pkg-config, linked against the
# shared library, and linked wholly static (Debian's static libuv is libuv_a, named by the
# libuv-static that mp.pc requires); each run spawns its child.
prefix=$(mktemp -d)
# Without MPI: Debian ships no static Open MPI, so a cc -static program cannot link it.
[ -d build-install ] || packaging_quietly meson setup build-install -Dtests=false -Ddemos=false \
  -Dmpi=disabled
packaging_quietly meson configure build-install -Dprefix="$prefix"
packaging_quietly meson install -C build-install
sed -n '/^```c$/,/^```$/p' README.md | sed '1d;$d' > "$prefix/first.c"
PKG_CONFIG_PATH=$(dirname "$(find "$prefix" -name mp.pc)")
export PKG_CONFIG_PATH
libdir=$(pkg-config --variable=libdir mp)
cc -Wall -Werror "$prefix/first.c" $(pkg-config --cflags --libs mp) -Wl,-rpath,"$libdir" \
  -o "$prefix/first"
"$prefix/first"
# glibc warns that dlopen in a static program needs its shared libraries at run time: libmp
# calls it only for a function of a library the parent itself loaded with dlopen.
cc -static -Wall -Werror "$prefix/first.c" $(pkg-config --static --cflags --libs mp) \
  -o "$prefix/first-static" 2>&1 |
  { grep -v -e "Using 'dlopen' in statically linked" -e 'reduction.c.o): in function' || true; }
"$prefix/first-static"
echo "packaging: the README's first program, linked through pkg-config shared and static, ran"

# The consumer project again, finding the installed libmp through pkg-config only.
packaging_quietly meson setup "$consumer/pc-shared" "$consumer/src" --wrap-mode=nofallback \
  -Dwerror=true -Dc_link_args="-Wl,-rpath,$libdir"
packaging_quietly meson test -C "$consumer/pc-shared" --print-errorlogs
packaging_quietly meson setup "$consumer/pc-static" "$consumer/src" --wrap-mode=nofallback \
  -Dwerror=true -Dprefer_static=true
packaging_quietly meson test -C "$consumer/pc-static" --print-errorlogs
[[ $(ldd "$consumer/pc-static/consumer") != *libmp.so* ]]
echo "packaging: the consumer project links the installed libmp by pkg-config, shared and static"

# Every public function has a page: man finds mp_pool_map in the installed tree.
[[ $(MANWIDTH=80 man -M "$prefix/share/man" 3 mp_pool_map) == *mp_pool_map* ]]
echo "packaging: man -M $prefix/share/man 3 mp_pool_map works;" \
  "$(ls "$prefix/share/man/man3" | wc -l) pages installed"
unset PKG_CONFIG_PATH
