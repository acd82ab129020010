#!/usr/bin/env bash
# usage: bench/tools/idle-rss.sh BROKK_BIN [N]: resident memory per idle connection (brokk-bench idle, N = 5000)
set -e
bin=$1; n=${2:-5000}
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
d=$(mktemp -d)
cat > $d/b.toml <<EOT
[listeners.tcp]
bind = "127.0.0.1:$port"
[metrics]
enabled = false
[storage]
backend = "memory"
[admin]
enabled = false
[limits]
max_connections = 1000000
receive_maximum = 64
max_inflight = 64
max_queue_depth = 100000
max_queue_depth_disconnected = 100000
EOT
RUST_LOG=warn $bin --config $d/b.toml > $d/log 2>&1 &
pid=$!
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
"${BENCH:-$(dirname "$0")/../target/release/brokk-bench}" idle --addr 127.0.0.1:$port --broker-pid $pid --connections $n
kill $pid; wait $pid 2>/dev/null || true
rm -rf $d
