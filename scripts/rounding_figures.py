"""What bf16/fp16 rounding leaves of a perturbation of the embedded model at sigma 1e-4, 1e-3 and 5e-3, per
tensor group (the figures in the README's "Half precision rounds small perturbations away")."""

from __future__ import annotations

from thickets.engines.rounding import rounding_record
from thickets.models import local_folder, resolve
from thickets.noise import PerturbationSpec
from thickets.randopt.config import SearchConfig


def main() -> None:
    folder = local_folder(resolve("smollm2-135m"))
    seed = SearchConfig().candidate(0).seed
    specs = [PerturbationSpec(seed, s) for s in (1e-4, 1e-3, 5e-3)]
    for dtype in ("bfloat16", "float16"):
        record = rounding_record(folder, specs, dtype)
        assert record is not None
        for row in record["sigmas"]:
            groups = row["groups"]
            n = sum(g["entries"] for g in groups.values())
            moved = sum(g["changed"] * g["entries"] for g in groups.values()) / n
            print(f"{dtype} sigma {row['sigma']:g}: {moved:.1%} of the sampled entries move")
            for name, g in groups.items():
                print(f"    {name:50s} keeps {g['kept']:6.1%} of the energy, {g['changed']:6.1%} of entries move")


if __name__ == "__main__":
    main()
