// CPU and memory from /proc: a process's utime+stime (all threads) and VmRSS, the machine's
// busy time from /proc/stat, and the load average. Linux only.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

export const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

/** utime+stime in clock ticks, or null when the process is gone. */
export function cpuTicks(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // fields 14 and 15 of proc(5)
  } catch (_) {
    return null;
  }
}

/** VmRSS and VmHWM in MB, or nulls. */
export function memory(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key) => {
      const m = status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'));
      return m ? Number(m[1]) / 1024 : null;
    };
    return { rssMb: kb('VmRSS'), hwmMb: kb('VmHWM') };
  } catch (_) {
    return { rssMb: null, hwmMb: null };
  }
}

/** Every process below `root` (children, grandchildren, …), from /proc/<pid>/stat ppid fields. */
export function descendants(root) {
  const parent = new Map();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      parent.set(Number(name), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch (_) { /* gone */ }
  }
  const out = [];
  const walk = (p) => {
    for (const [pid, pp] of parent) if (pp === p) { out.push(pid); walk(pid); }
  };
  walk(root);
  return out;
}

function machineTicks() {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line;
  const total = user + nice + system + idle + iowait + irq + softirq + steal;
  return { busy: total - idle - iowait, total };
}

export const CORES = os.cpus().length;

/**
 * Starts a measurement window over the given processes: `pids` is {label: pid}, or a function
 * returning {label: [pid…]} evaluated at both ends (for process trees). Call `.stop()` for
 * cores used per label, machine busy cores and the 1-min load average.
 */
export function cpuWindow(pids) {
  const resolve = () => {
    const m = typeof pids === 'function' ? pids() : pids;
    const out = {};
    for (const [label, p] of Object.entries(m)) {
      const list = Array.isArray(p) ? p : [p];
      out[label] = new Map(list.filter(Boolean).map((pid) => [pid, cpuTicks(pid)]));
    }
    return out;
  };
  const t0 = process.hrtime.bigint();
  const before = resolve();
  const m0 = machineTicks();
  return {
    stop() {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const after = resolve();
      const m1 = machineTicks();
      const cores = {};
      for (const [label, pidsAfter] of Object.entries(after)) {
        let ticks = 0;
        for (const [pid, t1] of pidsAfter) {
          const t0p = before[label] && before[label].get(pid);
          if (t1 === null) continue;
          ticks += t1 - (t0p === undefined || t0p === null ? 0 : t0p); // born inside the window: all of it
        }
        cores[label] = round(ticks / CLK_TCK / seconds, 3);
      }
      const machineBusy = round(((m1.busy - m0.busy) / Math.max(1, m1.total - m0.total)) * CORES, 3);
      const loadavg1 = Number(fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
      // Busy time of everything not measured here: other work on the machine, the kernel's.
      const ours = Object.values(cores).reduce((a, b) => a + (b || 0), 0);
      return { seconds: round(seconds, 2), cores, machineBusyCores: machineBusy, otherCores: round(Math.max(0, machineBusy - ours), 3), loadavg1 };
    },
  };
}

export function round(x, digits = 1) {
  if (x === null || x === undefined || !Number.isFinite(x)) return null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
