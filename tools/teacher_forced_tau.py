"""Teacher-forced greedy tau (the training report's final_greedy_tau) of
several heads on one data folder's held-out and evaluation features, so
that heads trained on different folders compare on the same sequences
(each folder regenerates its own evaluation responses).

    python -m tools.teacher_forced_tau \
        runs/heads-smollm2/data-c5600-8000-bf16 checkpoints/dspark-smollm2 runs/heads-smollm2/dspark-c8000-1
"""
import json
import os
import sys

import torch

from engine.models.loader import load_model
from engine.spec.heads.checkpoint import load_head
from engine.spec.training.evaluate import teacher_forced_simulation
from engine.spec.training.features import load_features


def main(folder: str, heads: list[str]) -> None:
    torch.set_num_threads(1)
    target = load_model(None)  # the default model, as the heads were trained on
    sets = {name: load_features(os.path.join(folder, f"features-{role}"))
            for name, role in (("heldout", "heldout"), ("mtbench", "eval-mtbench"), ("humaneval", "eval-humaneval"))}
    for directory in heads:
        head = load_head(directory, target.model)
        taus = {name: round(teacher_forced_simulation(head, features).tau, 4) for name, features in sets.items()}
        print(json.dumps({"head": directory, **taus}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
