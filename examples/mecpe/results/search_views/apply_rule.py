"""search_views.txt's selection rule, applied to the dev study and its dev robustness study.

    python examples/mecpe/results/search_views/apply_rule.py runs/search_views

Reads NAME-seedN/run.json (clean dev metrics) and robustness-dev/robustness.json (rate 0.3, the
flip rate and the mean |confidence change| of gold pairs); prints one line per setting and the
choice. Dev metrics only.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

RATE = 0.3
#: The settings file: rule 4 breaks its last tie by the earlier line there.
SETTINGS = Path(__file__).resolve().parents[2] / "search_views.txt"
FAMILIES = ("insert", "delete", "replace", "speaker")
#: Families each setting was not built from (rule 3); absent: the representation view, all four.
NOT_BUILT_FROM = {
    "view-insert-.3": ("delete", "replace", "speaker"),
    "view-insert-.3-w3": ("delete", "replace", "speaker"),
    "view-delete-.3": ("insert", "replace", "speaker"),
    "view-insdel-.3": ("replace", "speaker"),
}


def main(study: Path) -> None:
    clean: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted(study.glob("*-seed*/run.json")):
        name, seed = path.parent.name.rsplit("-seed", 1)
        run = json.loads(path.read_text())
        assert run.get("complete") and not run.get("test"), path
        clean.setdefault(name, {})[int(seed)] = run["dev"]
    report = json.loads((study / "robustness-dev" / "robustness.json").read_text())
    assert report["split"] == "dev"
    stab: dict[tuple[str, int, str], tuple[float, float]] = {}
    for run in report["runs"]:
        for view in run["views"]:
            if view["rate"] == RATE:
                m = view["metrics"]
                stab[run["arm"], run["seed"], view["family"]] = (
                    m["flip_rate"],
                    m["conf_change_gold"],
                )
    base = clean["base"]
    seeds = sorted(base)

    def mean(name: str, key: str) -> float:
        return statistics.fmean(clean[name][s][key] for s in seeds)

    def spread(key: str) -> float:
        return max(base[s][key] for s in seeds) - min(base[s][key] for s in seeds)

    results = []
    for name in clean:
        if name == "base":
            continue
        eligible = all(
            mean(name, k) >= mean("base", k) - spread(k) for k in ("pair_f1", "pair_auprc")
        )
        stable = [
            fam
            for fam in NOT_BUILT_FROM.get(name, FAMILIES)
            if all(
                stab[name, s, fam][0] < stab["base", s, fam][0]
                and stab[name, s, fam][1] < stab["base", s, fam][1]
                for s in seeds
            )
        ]
        flips = statistics.fmean(
            stab[name, s, f][0] for s in seeds for f in NOT_BUILT_FROM.get(name, FAMILIES)
        )
        results.append((name, eligible, stable, flips))
        per_family = ", ".join(
            f"{f} flip {statistics.fmean(stab[name, s, f][0] for s in seeds):.4f}"
            f"/{statistics.fmean(stab['base', s, f][0] for s in seeds):.4f}"
            f" |dconf| {statistics.fmean(stab[name, s, f][1] for s in seeds):.4f}"
            f"/{statistics.fmean(stab['base', s, f][1] for s in seeds):.4f}"
            for f in FAMILIES
        )
        print(
            f"{name}: F1 {mean(name, 'pair_f1'):.4f} (base {mean('base', 'pair_f1'):.4f}), "
            f"AUPRC {mean(name, 'pair_auprc'):.4f} (base {mean('base', 'pair_auprc'):.4f}), "
            f"eligible {eligible}; more stable on {stable or 'none'} (of "
            f"{list(NOT_BUILT_FROM.get(name, FAMILIES))}); setting/base at rate {RATE}: {per_family}"
        )
    candidates = [r for r in results if r[1] and r[2]]
    if not candidates:
        print("chosen: none (no eligible setting is more stable on a family it was not built from)")
        return
    order = [
        line.split("|", 1)[0].strip()
        for line in SETTINGS.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    best = sorted(candidates, key=lambda r: (-len(r[2]), r[3], order.index(r[0])))[0]
    print(f"chosen: {best[0]} (more stable on {best[2]})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
