# Detection helpers for scripts/deps, kept apart so scripts/test-deps can feed them
# made-up machines. Sourced, never run. Each function decides from its input only.

# libclang_in_listing: reads an `ldconfig -p` listing on stdin and succeeds when it names
# a library that bindgen (clang-sys) would load: libclang.so, libclang.so.N,
# libclang-N.so or libclang-N.so.M. libclang-cpp.so.N is clang's C++ library, not the C
# API bindgen needs, and clang-sys skips it; a machine image can ship it alone.
libclang_in_listing() {
    local name
    while read -r name _; do
        case $name in
            libclang-cpp*) ;;
            libclang.so | libclang.so.[0-9]* | libclang-[0-9]*.so | libclang-[0-9]*.so.[0-9]*)
                return 0 ;;
        esac
    done
    return 1
}

# libclang_packages: the Debian packages that bring libclang. Reads `apt-cache show
# libclang1-14`'s exit status as $1 (0: the package exists). Debian 12 has the small
# versioned pair; newer releases carry libclang-dev for their own LLVM.
libclang_packages() {
    if [ "$1" = 0 ]; then
        echo "libclang1-14 libclang-common-14-dev"
    else
        echo "libclang-dev"
    fi
}

# command_on_path NAME PATHLIST: succeeds when a directory of PATHLIST (colon-separated,
# like $PATH) holds an executable file NAME, as `command -v` would find it; an empty
# entry is the current directory, as for the shell. scripts/deps asks it for promtool
# (scripts/check-monitoring) with the real $PATH; scripts/test-deps with made-up ones.
command_on_path() {
    local name=$1 dir
    local -a dirs
    IFS=: read -ra dirs <<<"$2:"
    for dir in "${dirs[@]}"; do
        [ -n "$dir" ] || dir=.
        if [ -f "$dir/$name" ] && [ -x "$dir/$name" ]; then
            return 0
        fi
    done
    return 1
}
