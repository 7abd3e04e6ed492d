"""Summarise a py-spy ``--format raw`` profile: self time and inclusive time per frame."""

from __future__ import annotations

import sys
from collections import Counter


def summarise(path: str, top: int = 20) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            samples += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    out = [f"{samples} samples; self time:"]
    out += [f"  {100 * n / samples:5.1f}%  {f[:140]}" for f, n in own.most_common(top)]
    out.append("inclusive time (app proxy and aiohttp frames):")
    out += [f"  {100 * n / samples:5.1f}%  {f[:140]}" for f, n in total.most_common(200)
            if ("appproxy/" in f or "aiohttp/" in f) and n / samples > 0.02][:top]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(sys.argv[1]))
