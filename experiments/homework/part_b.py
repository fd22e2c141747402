"""The homework's Part B: run B1 (one pipeline) or B2 (two pipelines) and compare with
single-process training.

    python experiments/homework/part_b.py --pipelines 1 --stages 3 --microbatches 3 --steps 20
    python experiments/homework/part_b.py --pipelines 2 --stages 3 --microbatches 3
    python experiments/homework/part_b.py --timing      # steps/s with 1, 3 and 6 microbatches
"""

from __future__ import annotations

import argparse

import torch
from pipeline import PipelineConfig, run_pipeline, train_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", type=int, default=1)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--microbatches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=24, help="per pipeline")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timing", action="store_true",
                        help="steps per second with 1, 3 and 6 microbatches")
    args = parser.parse_args()
    counts = (1, 3, 6) if args.timing else (args.microbatches,)
    for microbatches in counts:
        cfg = PipelineConfig(stages=args.stages, pipelines=args.pipelines,
                             microbatches=microbatches, batch_size=args.batch_size,
                             steps=args.steps)
        run = run_pipeline(cfg)
        reference = train_reference(cfg)
        diff = max(float((run.state[k] - reference[k]).abs().max()) for k in reference)
        print(f"{cfg.pipelines} pipeline(s) x {cfg.stages} stages, {microbatches} microbatches, "
              f"{cfg.steps} steps: {run.steps_per_second:.1f} steps/s; largest parameter "
              f"difference from single-process training: {diff:.2e}")
        assert torch.isfinite(torch.tensor(diff))


if __name__ == "__main__":
    main()
