#!/usr/bin/env python3
"""Plain vectorized numpy GCC-PHAT over a folder of tap files, as a speed reference.

For every tap file (`<device>_<upload-id>_<unix-seconds>_<tap>.json`): json.load, one batched
rfft of the eight channels (first SEGMENT samples, mean removed, zero-padded to N_FFT), the
cross-spectra against the tapped channel with PHAT weighting, one batched irfft, and the argmax
in the physical lag window 0 .. ceil(D / V_MIN / dt) + 1 samples. Files are grouped into sets as
the service does: same device, taps 1..8, made within WINDOW_S of the set's first file. Each
complete set gives an 8x8 velocity matrix (m/s, chord / ToF, 0 on the diagonal and where the lag
is 0), written as result_<device>_<unix-seconds>.json when --out is given.

This is the straightforward method (integer lag, no onset physics): it is the baseline the
Rust engine is timed against, not a reference for accuracy.

Usage: gcc_phat_numpy.py DIR [--out OUT]
"""

import argparse
import json
import math
import os
import sys
import time

try:
    import numpy as np
except ImportError:
    sys.exit("numpy is missing: install it with `pip install numpy` (or python3 -m pip install numpy)")

N_SENSORS = 8
DIAMETER_M = 0.3
V_MIN_M_S = 300.0
SEGMENT = 256
N_FFT = 512
EPS = 1e-12
WINDOW_S = 900


def chords(diameter_m):
    idx = np.arange(N_SENSORS)
    m = np.abs(idx[:, None] - idx[None, :])
    m = np.minimum(m, N_SENSORS - m)
    return diameter_m * np.sin(np.pi * m / N_SENSORS)


def tap_tof_s(path, tap_idx):
    """ToF (s) from the tapped sensor to each sensor, by GCC-PHAT; NaN where unusable."""
    with open(path) as f:
        objects = json.load(f)
    channels = [None] * N_SENSORS
    timestamps = None
    for obj in objects:
        for key, value in obj.items():
            if key.startswith("value") and key[5:].isdigit():
                channels[int(key[5:]) - 1] = value
            elif key == "timestamp":
                timestamps = value
    n = min(len(timestamps), *(len(c) for c in channels))
    ts = np.asarray(timestamps[:n], dtype=np.float64)
    dt_s = (ts[-1] - ts[0]) / (n - 1) * 1e-9
    x = np.asarray([c[:SEGMENT] for c in channels], dtype=np.float64)
    x -= x.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(x, n=N_FFT, axis=1)
    cross = spec * np.conj(spec[tap_idx])[None, :]
    cross /= np.abs(cross) + EPS
    corr = np.fft.irfft(cross, n=N_FFT, axis=1)
    hi = math.ceil(DIAMETER_M / V_MIN_M_S / dt_s) + 1
    lag = np.argmax(corr[:, : hi + 1], axis=1)
    tof = lag * dt_s
    tof[lag == 0] = np.nan
    return tof


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--out")
    args = ap.parse_args()
    start = time.perf_counter()
    by_device = {}
    for name in os.listdir(args.folder):
        stem, ext = os.path.splitext(name)
        fields = stem.split("_")
        if ext != ".json" or len(fields) not in (2, 4) or not all(f.isdigit() for f in fields[-2:]):
            continue
        device = fields[0] if len(fields) == 4 else "legacy"
        tap = int(fields[-1])
        if 1 <= tap <= N_SENSORS:
            by_device.setdefault(device, []).append((int(fields[-2]), tap - 1, name))
    sets = {}
    for device, files in by_device.items():
        files.sort()
        group, first = {}, None
        for unix_s, tap_idx, name in files + [(math.inf, 0, None)]:
            if first is None or unix_s - first > WINDOW_S or tap_idx in group:
                if len(group) == N_SENSORS:
                    sets[f"{device}_{first}"] = group
                group, first = {}, unix_s
            group[tap_idx] = name
    chord = chords(DIAMETER_M)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    n_done = 0
    for key, taps in sets.items():
        if len(taps) != N_SENSORS:
            continue
        tof = np.array([tap_tof_s(os.path.join(args.folder, taps[i]), i) for i in range(N_SENSORS)])
        with np.errstate(divide="ignore", invalid="ignore"):
            velocity = np.where(np.isfinite(tof) & (tof > 0), chord / tof, 0.0)
        np.fill_diagonal(velocity, 0.0)
        if args.out:
            with open(os.path.join(args.out, f"result_{key}.json"), "w") as f:
                json.dump(velocity.tolist(), f)
        n_done += 1
    elapsed = time.perf_counter() - start
    print(f"numpy: {n_done} sets in {elapsed:.3f} s (excluding interpreter start and import)")


if __name__ == "__main__":
    main()
