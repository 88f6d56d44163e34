# cairn's recipes. Thin on purpose: the logic lives in Rust (tests, the bench binary, the demo).
# Everything builds with --release: RocksDB's C++ build dominates, and one profile builds it once.

export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")

# The whole lifecycle on a scratch workspace, narrated (`cairn demo`): installs, features,
# a connect undone by a failing hook, an uninstall that survives SIGKILL, an audit.
demo: prereqs
    cargo run --release -q -p cairn-cli --bin cairn -- demo

# Build the `cairn` binary (target/release/cairn, or under $CARGO_TARGET_DIR).
build: prereqs
    cargo build --release -p cairn-cli

# The whole suite: fmt check, clippy -D warnings, every test including the slow ones.
test: prereqs
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings
    CAIRN_SLOW_TESTS=1 cargo test --release --workspace

# The full side-by-side comparison (cairn vs raw RocksDB vs SQLite), then criterion benches.
bench: prereqs
    cargo run --release -q -p cairn-benches --bin compare
    cargo bench -p cairn-benches

# The quick comparison (under 2 minutes).
bench-quick: prereqs
    cargo run --release -q -p cairn-benches --bin compare -- --quick

# Run a real fuzzer (libFuzzer via cargo-fuzz) on TARGET: decode_entry or verify_chain.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
fuzz TARGET SECONDS="60": prereqs
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {{TARGET}} corpus/{{TARGET}} -- -max_total_time={{SECONDS}}

# The web console's screenshot in docs/operations.md (docs/console.png): a scratch leader and
# mirror with sample data and a minute of writes, photographed by headless Chromium (the
# console test binary's --screenshot mode, so it runs the same fixture as the browser tests).
screenshot: prereqs
    cargo test --release -p cairn-cli --test console -- --screenshot {{justfile_directory()}}/docs/console.png

# Install what the build needs when it is missing (RocksDB's bindgen needs libclang),
# fusermount3 for the power-cut tests' FUSE mount when not root (root mounts with mount(2)),
# and headless Chromium with chromedriver for the console's browser tests.
prereqs:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v clang >/dev/null || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libclang-dev clang >/dev/null
    fi
    if [ "$(id -u)" != 0 ] && ! command -v fusermount3 >/dev/null; then
        sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -qq fuse3 >/dev/null
    fi
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
