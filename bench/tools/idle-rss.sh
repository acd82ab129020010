#!/usr/bin/env bash
# usage: bench/tools/idle-rss.sh BROKK_BIN [N]: resident memory per idle connection (brokk-bench idle, N = 5000)
set -e
bin=$1; n=${2:-5000}
. "$(dirname "$0")/common.sh"
RUST_LOG=warn $bin --config $d/b.toml > $d/log 2>&1 &
pid=$!
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
"${BENCH:-$(dirname "$0")/../target/release/brokk-bench}" idle --addr 127.0.0.1:$port --broker-pid $pid --connections $n
kill $pid; wait $pid 2>/dev/null || true
rm -rf $d
