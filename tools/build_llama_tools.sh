#!/usr/bin/env bash
# Builds llama.cpp's own programs from the llama.cpp source vendored in the llama-cpp-python sdist,
# with the binding's CMake args (same instruction sets, never AMX), static, into the venv's bin/.
# Called by `make install`; does nothing when the stamp says this version and these args are built.
#   tools/build_llama_tools.sh SDIST VERSION BIN_DIR STAMP "CMAKE_ARGS" PROGRAM...
set -euo pipefail
sdist=$1 version=$2 bin=$3 stamp=$4 cmake_args=$5
shift 5
programs=("$@")
want="$version $cmake_args"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && (cd "$bin" && ls "${programs[@]}") > /dev/null 2>&1; then
  exit 0
fi
work=$(dirname "$stamp")/build/llama.cpp-$version
rm -rf "$work" && mkdir -p "$work/src"
tar -xzf "$sdist" -C "$work/src" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp"
step() {  # run quietly; on failure show the end of its log
  local log=$1
  shift
  "$@" > "$log" 2>&1 || { tail -40 "$log"; echo "llama.cpp programs: failed, full log in $log" >&2; exit 1; }
}
# no network during the build: no web UI (neither npm nor a prebuilt download), no HTTPS client
# shellcheck disable=SC2086  # cmake_args is a list of flags
step "$work/cmake.log" cmake -S "$work/src" -B "$work/out" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF $cmake_args
step "$work/build.log" cmake --build "$work/out" -j "$(nproc)" --target "${programs[@]}"
for program in "${programs[@]}"; do
  install -m 755 "$work/out/bin/$program" "$bin/$program"
done
rm -rf "$work"
echo "$want" > "$stamp"
