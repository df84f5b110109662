#!/bin/bash
# Tiny real traces WITH losses: overwrite-mode instance (trace shows "buffer started",
# trace_pipe shows "CPU:N [LOST M EVENTS]"), trace-cmd extract of an overwritten buffer,
# perf record with a 1-page mmap buffer (perf script --show-lost-events).
set -u
TR=${TR:-/tmp/trfs}
OUT=$1
mkdir -p $OUT
EVENTS="mm_page_alloc mm_page_free mm_page_free_batched mm_page_alloc_zone_locked mm_page_pcpu_drain kmem_cache_alloc kmem_cache_free kmalloc kfree"
A=$TR/instances/memdesc-lost-a-$$
B=$TR/instances/memdesc-lost-b-$$
PE=""
for e in $EVENTS; do PE="$PE -e kmem:$e"; done
for I in $A $B; do
  mkdir $I
  echo 0 > $I/tracing_on
  echo 8 > $I/buffer_size_kb
  echo mono > $I/trace_clock
  echo 1 > $I/options/overwrite
  echo 0 > $I/options/hash-ptr
  for e in $EVENTS; do echo 1 > $I/events/kmem/$e/enable; done
done
echo 1 > $A/tracing_on; echo 1 > $B/tracing_on
perf record -q -a -m 1 -k CLOCK_MONOTONIC $PE -o $OUT/perf.data -- sh -c 'find /usr/share -maxdepth 3 > /dev/null; head -c 3000000 /dev/urandom > /tmp/memdesc-lost.bin; rm /tmp/memdesc-lost.bin'
echo 0 > $A/tracing_on; echo 0 > $B/tracing_on
cat $A/trace > $OUT/trace-overwrite.txt
for c in 0 1; do cat $A/per_cpu/cpu$c/stats > $OUT/stats.cpu$c.txt; done
# trace_pipe: consume what's left (reader lost the overwritten events)
timeout 1 cat $A/trace_pipe > $OUT/trace_pipe-lost.txt
rmdir $A
trace-cmd extract -B $(basename $B) -o $OUT/tc.dat > /dev/null 2>&1
[ -d $B ] && rmdir $B
trace-cmd report $OUT/tc.dat > $OUT/trace-cmd-report.full.txt 2>&1
perf script --show-lost-events -i $OUT/perf.data > $OUT/perf-script.full.txt 2>/dev/null
