#!/usr/bin/env bash
# usage: bench/tools/cg-mosq.sh - SCENARIO CLIENTS QOS RATE SECS: the same for Mosquitto (`user root`, so valgrind can write its output)
set -e
bin=$1; sc=$2; cl=$3; q=$4; rate=$5; secs=$6
. "$(dirname "$0")/common.sh"
printf "listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\nmax_queued_messages 100000\nmax_inflight_messages 64\nmax_connections -1\nlog_type error\nuser root\n" $port > $d/m.conf; valgrind --tool=callgrind --callgrind-out-file=$d/cg.out /usr/sbin/mosquitto -c $d/m.conf > $d/log 2>&1 &
pid=$!
for i in $(seq 200); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
"${BENCH:-$(dirname "$0")/../target/release/brokk-bench}" load --addr 127.0.0.1:$port --scenario $sc --clients $cl --qos $q --payload 64 --rate $rate --secs $secs --warmup 0.2 > $d/load.json
sleep 0.5
kill -INT $pid; wait $pid 2>/dev/null || true
ir=$(grep -m1 "^summary:" $d/cg.out | awk '{print $2}')
echo "IR $ir"
python3 -c "import json;j=json.load(open('$d/load.json'));print('sent',j.get('sent'),'received',j.get('received'),'lost',j.get('lost'))" 2>/dev/null || head -c 600 $d/load.json
cp $d/cg.out "${CG_OUT:-/tmp/last-cg.out}"
rm -rf $d
