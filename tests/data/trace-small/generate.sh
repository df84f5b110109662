#!/bin/bash
# Generate tiny real traces of the same kmem events: tracefs text + raw pages (instance A),
# trace-cmd report (instance B, `trace-cmd extract`), perf script (perf record -a -k mono).
set -eu
TR=${TR:-/tmp/trfs}
OUT=$1
KB=${KB:-16}
OVERWRITE=${OVERWRITE:-0}
mkdir -p $OUT/raw $OUT/formats
EVENTS="mm_page_alloc mm_page_free mm_page_free_batched mm_page_alloc_zone_locked mm_page_pcpu_drain kmem_cache_alloc kmem_cache_free kmalloc kfree"
A=$TR/instances/memdesc-gen-a-$$
B=$TR/instances/memdesc-gen-b-$$
PE=""
for e in $EVENTS; do PE="$PE -e kmem:$e"; done
for I in $A $B; do
  mkdir $I
  echo 0 > $I/tracing_on
  echo $KB > $I/buffer_size_kb
  echo mono > $I/trace_clock
  echo $OVERWRITE > $I/options/overwrite
  echo 0 > $I/options/hash-ptr
  for e in $EVENTS; do echo 1 > $I/events/kmem/$e/enable; done
done
perf record -q -a -k CLOCK_MONOTONIC $PE -o $OUT/perf.data -- sleep 0.8 &
PP=$!
sleep 0.3
echo 1 > $A/tracing_on; echo 1 > $B/tracing_on
echo "memdesc-gen start" > $A/trace_marker || true
echo "memdesc-gen start" > $B/trace_marker || true
sh -c "${WORKLOAD:-head -c 200000 /dev/urandom > /tmp/memdesc-gen-x.bin; cat /etc/passwd > /dev/null; rm /tmp/memdesc-gen-x.bin}"
echo "memdesc-gen end" > $A/trace_marker || true
echo "memdesc-gen end" > $B/trace_marker || true
echo 0 > $A/tracing_on; echo 0 > $B/tracing_on
wait $PP || true
cat $A/trace > $OUT/trace.txt
for c in $(ls $A/per_cpu | sed 's/cpu//'); do
  cat $A/per_cpu/cpu$c/stats > $OUT/stats.cpu$c.txt
  python3 - $A/per_cpu/cpu$c/trace_pipe_raw $OUT/raw/trace_pipe_raw.cpu$c.bin <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
with open(sys.argv[2], "wb") as out:
    while True:
        try:
            b = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not b:
            break
        out.write(b)
os.close(fd)
PY
done
cp $TR/events/header_page $TR/events/header_event $OUT/formats/
for e in $EVENTS; do cp $TR/events/kmem/$e/format $OUT/formats/kmem.$e.format; done
cp $TR/events/ftrace/print/format $OUT/formats/ftrace.print.format
rmdir $A
trace-cmd extract -B $(basename $B) -o $OUT/tc.dat > /dev/null 2>&1
[ -d $B ] && rmdir $B
trace-cmd report $OUT/tc.dat > $OUT/trace-cmd-report.full.txt
perf script -i $OUT/perf.data > $OUT/perf-script.full.txt 2>/dev/null
