#!/usr/bin/env bash
# usage: bench/tools/cg-per-delivery-mosquitto.sh - SCENARIO CLIENTS QOS RATE: the same for Mosquitto
bin=$1; shift
a=$("$(dirname "$0")"/cg-mosq.sh $bin "$@" 1 2>&1)
b=$("$(dirname "$0")"/cg-mosq.sh $bin "$@" 4 2>&1)
ia=$(echo "$a" | awk '/^IR/{print $2}'); ib=$(echo "$b" | awk '/^IR/{print $2}')
ra=$(echo "$a" | awk '/^sent/{print $4}'); rb=$(echo "$b" | awk '/^sent/{print $4}')
la=$(echo "$a" | awk '/^sent/{print $6}'); lb=$(echo "$b" | awk '/^sent/{print $6}')
python3 -c "print('Ir/delivery %.0f  (Ir %s / %s, deliveries %s / %s, lost %s / %s)'%(($ib-$ia)/($rb-$ra),'$ia','$ib','$ra','$rb','$la','$lb'))"
