"""Defaults of a segmentation training, declared once.

The suite's ``judge``/``evaluator``/``downstream`` sections (:mod:`bench.schema.sections`) and ``todsynth seg train``
read them, so a model trained by hand is trained as a suite trains it unless an option says otherwise. Imports
nothing (the CLI reads them while it declares its options).
"""

from __future__ import annotations

from typing import Final, Literal

SEG_MODEL: Final = "fcn-r18"  # the judge's (the evaluator and downstream models have their own, another architecture)
SEG_ITERS = 200
SEG_BATCH_SIZE = 4  # images per iteration and process, as MMSeg's LoveDA configs (4 GPUs x 4)
SEG_OPTIMIZER: Literal["sgd", "adamw"] = "sgd"
SEG_DEFAULT_LR: dict[str, float] = {"sgd": 0.01, "adamw": 1e-3}  # the peak rate when none is given
