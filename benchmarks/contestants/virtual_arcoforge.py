"""Virtual references: arcoforge, local engine, ``--workers`` (2) workers.

``FilePattern | OpenWithKerchunk(file_type="netcdf4") | WriteCombinedReference("ref",
concat_dims=["time"], output_file_name="reference.json" | "reference.parquet")`` baked with
``bake(recipe, out, workers=2)``.  With ``--append`` the paths file lists the whole archive
(the files already referenced plus the new ones) and the bake is ``bake(..., append=True)``
into the same target.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, daily_pattern, parse_args, write_result


def _extra(p) -> None:
    p.add_argument("--format", choices=("json", "parquet"), required=True)
    p.add_argument("--append", action="store_true", help="append to the existing references")


def main() -> None:
    args = parse_args(_extra)
    import arcoforge
    from arcoforge import bake

    try:
        from arcoforge import OpenWithKerchunk, WriteCombinedReference
    except ImportError:  # a version that does not export them at the top level (yet)
        from arcoforge.recipe.steps import OpenWithKerchunk, WriteCombinedReference

    paths = [str(p) for p in args.paths]
    name = f"reference.{args.format}"
    with Timer() as t:
        pattern = daily_pattern(paths)
        recipe = (
            pattern
            | OpenWithKerchunk(file_type="netcdf4")
            | WriteCombinedReference("ref", concat_dims=["time"], output_file_name=name)
        )
        if args.append:
            result = bake(recipe, str(args.out), workers=args.workers, append=True)
        else:
            result = bake(recipe, str(args.out), workers=args.workers)
    write_result(
        args.result,
        t.seconds,
        output=str(args.out / "ref" / name),
        arcoforge=getattr(arcoforge, "__version__", "?"),
        bake_result=repr(result)[:2000],
        phases={k: round(v, 2) for k, v in (getattr(result, "stage_seconds", None) or {}).items()},
    )


if __name__ == "__main__":
    main()
