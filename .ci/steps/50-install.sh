# The README's example, built against the installed library through pkg-config, and run.
prefix=$(mktemp -d)
meson setup build-install --prefix="$prefix" -Dtests=false -Ddemos=false >/dev/null
meson install -C build-install >/dev/null
sed -n '/^```c$/,/^```$/p' README.md | sed '1d;$d' > "$prefix/first.c"
PKG_CONFIG_PATH=$(dirname "$(find "$prefix" -name mp.pc)")
export PKG_CONFIG_PATH
cc -Wall -Werror "$prefix/first.c" $(pkg-config --cflags --libs mp) \
  -Wl,-rpath,"$(pkg-config --variable=libdir mp)" -o "$prefix/first"
"$prefix/first"
