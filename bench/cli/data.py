"""``todsynth data`` and ``todsynth prompts``: procedural scenes, validation, index files, prompt vectors.

Plain command functions; ``cli.py`` registers them on its Typer apps. Imports :mod:`bench.cli.common` and (inside
the commands) ``todsynth.data``, ``todsynth.text``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional  # noqa: F401  (Optional used by typer signatures)

import typer
from rich.markup import escape

from bench.cli.common import console, err_console, fail, out_file, out_folder


def data_procedural(
    out: Annotated[Path, typer.Argument(help="Output root; gets {Train,Val}/{Urban,Rural}/{images_png,masks_png}.",
                                        callback=out_folder)],
    n_train: Annotated[int, typer.Option("--n-train", help="Train scenes (split Urban/Rural).")] = 16,
    n_val: Annotated[int, typer.Option("--n-val", help="Val scenes (split Urban/Rural).")] = 8,
    size: Annotated[int, typer.Option("--size", help="Tile size in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed; the same seed writes byte-identical PNGs.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing Train/Val under OUT.")] = False,
) -> None:
    """Write seeded procedural land-cover scenes in LoveDA's exact layout."""
    import time

    from todsynth.data.procedural import generate_dataset

    start = time.perf_counter()
    try:
        generate_dataset(out, n_train, n_val, size, seed, overwrite=overwrite, progress=True)
    except (ValueError, OSError) as exc:  # FileExistsError; a folder that cannot be written or replaced
        fail(str(exc))
    console.print(
        f"wrote {n_train} Train + {n_val} Val scenes ({size} px, seed {seed}) to {out} "
        f"in {time.perf_counter() - start:.2f} s"
    )


def data_validate(root: Annotated[Path, typer.Argument(help="Dataset root in LoveDA layout.")]) -> None:
    """Check pairing, PNG readability, modes, sizes and mask values; list every problem (exit 2 if any)."""
    from rich.progress import Progress

    from todsynth.data.validate import count_files, validate_dataset

    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("validating", total=count_files(root))
        problems = validate_dataset(root, progress=lambda _path: progress.advance(task))
    for problem in problems:
        console.print(f"[red]x[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if problems:
        fail(f"{len(problems)} problem(s) in {root}")
    console.print(f"[green]ok[/] {root}: {count_files(root)} images checked", highlight=False, soft_wrap=True)


def data_index(
    root: Annotated[Path, typer.Argument(help="Dataset root in LoveDA layout.")],
    split: Annotated[str, typer.Option("--split", help="Train or Val (Test has no masks).")] = "Train",
    out: Annotated[
        Path | None, typer.Option("--out", help="Output .jsonl (default ROOT/index.jsonl, ROOT/index_val.jsonl).",
                                  callback=out_file)
    ] = None,
) -> None:
    """Write index.jsonl: source (mask), target (image), prompt; paths relative to ROOT."""
    from todsynth.data.index import read_index, write_index
    from todsynth.files import file_problem

    if out is None:  # the default is checked as --out is
        out = root / ("index.jsonl" if split == "Train" else f"index_{split.lower()}.jsonl")
        if root.is_dir() and (problem := file_problem(out)) is not None:
            fail(problem)
    try:
        path = write_index(root, split, out)
    except ValueError as exc:
        fail(str(exc))
    entries = read_index(path)
    n_prompts = len({e["prompt"] for e in entries})
    console.print(f"wrote {len(entries)} entries ({n_prompts} distinct prompts) to {path}", highlight=False, soft_wrap=True)


def prompts_vectorize(
    index: Annotated[Path, typer.Argument(help="index.jsonl (from `todsynth data index`).")],
    encoder: Annotated[str, typer.Option("--encoder", help="sd3 (CLIP-L + CLIP-G + T5 from --sd3-dir) or tiny.")],
    sd3_dir: Annotated[Path | None, typer.Option("--sd3-dir", help="Local SD3.5 dir (default: $TODSYNTH_SD3_DIR).")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Cache dir (default: INDEX's dir/prompt_cache).",
                                               callback=out_folder)] = None,
    device: Annotated[str, typer.Option("--device", help="sd3: torch device.")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="sd3: float32, float16 or bfloat16.")] = "float32",
    t5_max_length: Annotated[int, typer.Option("--t5-max-length", min=1, help="sd3: T5 tokens.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per encoder call.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", min=2, help="tiny: tokens.")] = 16,
    joint_dim: Annotated[int, typer.Option("--joint-dim", min=1, help="tiny: embedding width.")] = 64,
    pooled_dim: Annotated[int, typer.Option("--pooled-dim", min=1, help="tiny: pooled width.")] = 64,
) -> None:
    """Encode every distinct prompt of INDEX once into a safetensors cache (cached prompts are skipped)."""
    import os

    import torch
    from rich.progress import Progress

    from todsynth.data.index import read_index
    from todsynth.text import ENCODER_KINDS, PromptCache, build_prompt_encoder

    if encoder not in ENCODER_KINDS:
        fail(f"--encoder {encoder!r} is not one of {', '.join(ENCODER_KINDS)}")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        fail(f"--dtype {dtype!r} is not one of {', '.join(dtypes)}")
    prompts = list(dict.fromkeys(e["prompt"] for e in read_index(index)))
    if not prompts:
        fail(f"{index} holds no entries")
    if encoder == "sd3":
        sd3_dir = sd3_dir or (Path(os.environ["TODSYNTH_SD3_DIR"]) if os.environ.get("TODSYNTH_SD3_DIR") else None)
        if sd3_dir is None:
            fail("--encoder sd3 needs --sd3-dir DIR (or TODSYNTH_SD3_DIR)")
        kw: dict[str, Any] = {"sd3_dir": sd3_dir, "device": device, "dtype": dtypes[dtype], "t5_max_length": t5_max_length}
    else:
        kw = {"seq_len": seq_len, "joint_dim": joint_dim, "pooled_dim": pooled_dim}
    store = PromptCache(cache or index.parent / "prompt_cache", build_prompt_encoder(encoder, **kw))  # type: ignore[arg-type]
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task(f"vectorizing ({store.encoder.name})", total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            store.get(chunk)
            progress.advance(task, len(chunk))
    console.print(
        f"{len(prompts)} distinct prompts: {store.prompts_encoded} encoded, {store.prompts_cached} cached "
        f"-> {store.dir} ({store.encoder.name})",
        highlight=False,
        soft_wrap=True,
    )
