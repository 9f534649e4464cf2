#!/usr/bin/env python3
"""Checks `tessera detect --json` against what Linux itself reports here.

- logical cores: the report's usable count equals `nproc`, and the
  machine's online count equals `nproc --all`;
- every avx512* and amx_* flag of /proc/cpuinfo is reported present in
  `machine.features` (a flag the report has no field for fails too);
- AMX is reported usable when /proc/cpuinfo lists amx_tile;
- power sensors: no RAPL sensor when /sys/class/powercap has no
  intel-rapl entry, and an empty list when there are no hwmon power
  inputs or power_supply readings either.

Usage: scripts/check_detect.py [path/to/tessera]. Exit status 1 on any
disagreement, with one line per disagreement.
"""
import glob
import json
import os
import subprocess
import sys


def cpuinfo_flags():
    """Union of the flags lines of /proc/cpuinfo (x86)."""
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags.update(value.split())
    return flags


def nproc(*args):
    return int(subprocess.run(["nproc", *args], check=True, capture_output=True, text=True).stdout)


def main():
    tessera = sys.argv[1] if len(sys.argv) > 1 else "target/release/tessera"
    out = subprocess.run([tessera, "detect", "--json"], check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    machine = report["machine"]
    features = machine["features"]
    problems = []

    def check(ok, message):
        if not ok:
            problems.append(message)

    usable, online = nproc(), nproc("--all")
    print(f"logical cores: report {report['cpu']['logical_cores']} usable / {machine['logical_cores']} online; "
          f"nproc {usable}, nproc --all {online}")
    check(report["cpu"]["logical_cores"] == usable, f"cpu.logical_cores {report['cpu']['logical_cores']} != nproc {usable}")
    check(machine["logical_cores"] == online, f"machine.logical_cores {machine['logical_cores']} != nproc --all {online}")

    flags = cpuinfo_flags()
    wanted = sorted(f for f in flags if f.startswith("avx512") or f.startswith("amx_"))
    print(f"avx512/amx flags in /proc/cpuinfo: {' '.join(wanted) or 'none'}")
    for flag in wanted:
        check(features.get(flag) is True, f"/proc/cpuinfo lists {flag} but machine.features.{flag} = {features.get(flag)!r}")

    amx = (report.get("x86") or {}).get("amx") or {}
    if "amx_tile" in flags:
        print(f"amx: cpuinfo lists amx_tile; report usable = {amx.get('usable')}")
        check(amx.get("usable") is True, f"/proc/cpuinfo lists amx_tile but AMX is reported unusable: {amx.get('reason')}")
    else:
        print("amx: no amx_tile in /proc/cpuinfo (usable not required)")

    sensors = machine["power_sensors"]
    rapl = glob.glob("/sys/class/powercap/intel-rapl*")
    hwmon = glob.glob("/sys/class/hwmon/*/power*_input")
    supply = [p for p in glob.glob("/sys/class/power_supply/*/*") if os.path.basename(p) in ("power_now", "current_now")]
    print(f"power: {len(rapl)} intel-rapl entries, {len(hwmon)} hwmon power inputs, {len(supply)} power_supply readings; "
          f"report lists {len(sensors)}")
    if not rapl:
        check(not any("intel-rapl" in s for s in sensors), f"no intel-rapl in /sys/class/powercap, yet reported: {sensors}")
        if not hwmon and not supply:
            check(sensors == [], f"no power sensors in sysfs, yet reported: {sensors}")

    for p in problems:
        print(f"MISMATCH: {p}")
    print("detect agrees with /proc and /sys" if not problems else f"{len(problems)} mismatch(es)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
