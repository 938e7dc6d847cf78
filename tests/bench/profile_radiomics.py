"""Where a radiomics extraction spends its time: seconds per feature class and for the
filters, per region (lesion, ring), on the step's own path (each image filtered once,
every region measured on the shared filtered images).

Each pyradiomics feature class is swapped for a subclass that times its construction
(masks, and binning: shared between the classes, so the first class measured on each
filtered image carries it) and ``execute`` (matrices, features); each enabled filter's generator is
timed as it yields. "checks, crops, rest" is a region's measuring time less both. Only
timing wraps pyradiomics: the same functions run on the same inputs.

Usage: ``python -m tests.bench.profile_radiomics CASES_JSON [--cases 20] [--perturb] [--write]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import radiomics
from radiomics import imageoperations

FILTERS = "filters (once per image)"
REST = "checks, crops, rest"


class Clock:
    """Seconds per (region, part), and how many regions / images were measured."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.regions: dict[str, int] = defaultdict(int)
        self.images = 0
        self.region = ""

    def add(self, part: str, seconds: float) -> None:
        self.seconds[(self.region, part)] += seconds


def _timed_class(cls: type, name: str, clock: Clock) -> type:
    def __init__(self, *args, **kwargs):  # noqa: N807 - a method of the generated class
        started = time.perf_counter()
        cls.__init__(self, *args, **kwargs)
        clock.add(name, time.perf_counter() - started)

    def execute(self):
        started = time.perf_counter()
        try:
            return cls.execute(self)
        finally:
            clock.add(name, time.perf_counter() - started)

    members = {"__init__": __init__, "execute": execute, "__module__": cls.__module__}
    return type(cls.__name__, (cls,), members)


def _timed_filter(make, clock: Clock):
    def generator(*args, **kwargs) -> Iterator[Any]:
        source = make(*args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                item = next(source)
            except StopIteration:
                clock.add(FILTERS, time.perf_counter() - started)
                return
            clock.add(FILTERS, time.perf_counter() - started)
            yield item

    return generator


def profile(cases: Sequence[Mapping[str, Any]], params: Mapping[str, Any], perturb: bool) -> Clock:
    """Measure ``cases`` as the radiomics step does, with every class and filter timed."""
    from tasks.features.imaging import case_regions
    from tasks.features.radiomics import make_extractor
    from tasks.features.radiomics_shared import SharedImage

    clock = Clock()
    classes = radiomics.getFeatureClasses()  # the dict execute and the shared path read
    saved_classes, saved_filters = dict(classes), {}
    for name, cls in saved_classes.items():
        classes[name] = _timed_class(cls, name, clock)
    for image_type in params.get("imageType") or {}:
        attr = f"get{image_type}Image"
        saved_filters[attr] = getattr(imageoperations, attr)
        setattr(imageoperations, attr, _timed_filter(saved_filters[attr], clock))
    try:
        extractor = make_extractor(params)
        for case in cases:
            regions = case_regions(case, perturb=perturb)
            shared = SharedImage(extractor, regions[0].image)
            clock.images += 1
            for region in regions:
                clock.region = region.region
                started = time.perf_counter()
                shared.measure(region.mask)
                clock.add("total", time.perf_counter() - started)
                clock.regions[region.region] += 1
    finally:
        classes.update(saved_classes)
        for attr, make in saved_filters.items():
            setattr(imageoperations, attr, make)
    return clock


def cpu_versus_execute(
    cases: Sequence[Mapping[str, Any]], params: Mapping[str, Any], perturb: bool, rounds: int = 2
) -> str:
    """CPU seconds (this process) of the same regions measured by ``execute`` per region and
    by the step's shared path, alternated case by case (which goes first alternates too), so
    that a machine whose speed drifts over minutes slows both alike; summed over ``rounds``."""
    from tasks.features.imaging import case_regions
    from tasks.features.radiomics import extract_region, make_extractor
    from tasks.features.radiomics_shared import SharedImage

    extractor = make_extractor(params)
    cases_regions = [case_regions(case, perturb=perturb) for case in cases]
    total = {"execute": 0.0, "shared": 0.0}
    for round_ in range(rounds):
        for i, regions in enumerate(cases_regions):
            for mode in sorted(total, reverse=(i + round_) % 2 == 1):
                started = time.process_time()
                shared = SharedImage(extractor, regions[0].image) if mode == "shared" else None
                for region in regions:
                    extract_region(extractor, region, shared)
                total[mode] += time.process_time() - started
    n = sum(len(r) for r in cases_regions)
    return (
        f"CPU s for {len(cases)} cases ({n} regions) x {rounds} rounds, alternated case by "
        f"case: `execute` per region {total['execute']:.2f}, each image filtered once "
        f"{total['shared']:.2f}: {total['execute'] / total['shared']:.3f}x."
    )


def table(clock: Clock) -> str:
    """Markdown: seconds per region for each part, lesion and ring; filters per image."""
    regions = sorted(clock.regions)
    parts = sorted(
        {part for (_, part) in clock.seconds if part not in ("total", FILTERS)},
        key=lambda p: -sum(clock.seconds[(r, p)] for r in regions),
    )
    head = " | ".join(f"{r} s/region" for r in regions)
    lines = [f"| part | {head} | share of all |", "|---" * (len(regions) + 2) + "|"]
    grand = sum(clock.seconds[(r, "total")] for r in regions) or 1.0
    rest = {
        r: clock.seconds[(r, "total")] - sum(clock.seconds[(r, p)] for p in [*parts, FILTERS])
        for r in regions
    }

    def row(label: str, per_region: dict[str, float], divide: dict[str, int]) -> str:
        cells = " | ".join(f"{per_region[r] / max(divide[r], 1):.3f}" for r in regions)
        return f"| {label} | {cells} | {sum(per_region.values()) / grand:.1%} |"

    for part in parts:
        lines.append(row(part, {r: clock.seconds[(r, part)] for r in regions}, clock.regions))
    lines.append(row(REST, rest, clock.regions))
    filters = sum(clock.seconds[(r, FILTERS)] for r in regions)
    cells = " | ".join(f"{filters / max(clock.images, 1):.3f} per image" for _ in regions)
    lines.append(f"| {FILTERS} | {cells} | {filters / grand:.1%} |")
    total = {r: clock.seconds[(r, "total")] for r in regions}
    lines.append(row("**all**", total, clock.regions))
    return "\n".join(lines)


def main() -> None:
    from tasks.config import Settings
    from tasks.features.radiomics import load_params, quiet_radiomics
    from tests.bench.common import machine_line, write_section

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases_json")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--perturb", action="store_true")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    loads = [os.getloadavg()[0]]
    quiet_radiomics()
    cases = json.loads(open(args.cases_json).read())[: args.cases]
    params = load_params(Settings().radiomics_params)
    text = f"{table(profile(cases, params, args.perturb))}\n\n"
    text += cpu_versus_execute(cases, params, args.perturb)
    loads.append(os.getloadavg()[0])
    command = "python -m tests.bench.profile_radiomics CASES_JSON --cases {} {}".format(
        len(cases), "--perturb" if args.perturb else ""
    )
    text = f"Command: `{command.strip()}`. {machine_line(loads)}\n\n{text}"
    print(text)
    if args.write:
        write_section("radiomics-profile", text)


if __name__ == "__main__":
    main()
