#!/usr/bin/env bash
# usage: bench/tools/syscalls-low-rate.sh brokk BROKK_BIN | mosquitto: system calls per delivery, 1,000 pairs at 20 msg/s each (QoS 0, 64 B; QOS=1 for QoS 1), counted with perf stat (kernel tracepoint counters) over 4 s in the middle of an 8 s run
set -e
kind=$1; bin=$2
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
d=$(mktemp -d)
if [ $kind = brokk ]; then
printf '[listeners.tcp]\nbind = "127.0.0.1:%s"\n[metrics]\nenabled = false\n[storage]\nbackend = "memory"\n[admin]\nenabled = false\n[limits]\nmax_connections = 1000000\n' $port > $d/b.toml
RUST_LOG=warn $bin --config $d/b.toml > $d/log 2>&1 &
else
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\nmax_connections -1\nlog_dest stderr\nlog_type error\n' $port > $d/m.conf
mosquitto -c $d/m.conf > $d/log 2>&1 &
fi
pid=$!
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
"${BENCH:-$(dirname "$0")/../target/release/brokk-bench}" load --addr 127.0.0.1:$port --broker-pid $pid --scenario pairs --clients 1000 --qos ${QOS:-0} --payload 64 --rate 20000 --secs 8 --warmup 0.5 > $d/load.json &
lp=$!
sleep 3
ev=raw_syscalls:sys_enter
for c in read write recvfrom sendto readv writev recvmsg sendmsg epoll_wait epoll_pwait epoll_pwait2 epoll_ctl futex sched_yield; do ev=$ev,syscalls:sys_enter_$c; done
timeout -s INT 4 perf stat -x, -e $ev -p $pid -o $d/trace.txt >/dev/null 2>&1 || true
wait $lp
python3 - $d/trace.txt $d/load.json <<'PY'
import sys,re,json,collections
tot=collections.Counter()
total=0
for l in open(sys.argv[1]):
    f=l.strip().split(',')
    if len(f)>2 and f[0].isdigit():
        if f[2]=='raw_syscalls:sys_enter': total=int(f[0])
        else: tot[f[2].replace('syscalls:sys_enter_','')]+=int(f[0])
j=json.load(open(sys.argv[2]))
n=80000
s=total
print("lost",j.get("lost"),"received",j.get("received"),"cpu",j.get("broker_cpu_s"))
print("total %d = %.2f per delivery (window 4 s x 20,000/s)"%(s,s/n))
for k,v in tot.most_common(8): print("  %-14s %7d %.2f"%(k,v,v/n))
PY
kill $pid; wait $pid 2>/dev/null || true
rm -rf $d
