"""The command-line arguments of train-draft, calibrate-draft and
eval-draft (cli.py runs them): training, calibration, data and evaluation
options, each group in one place so the subcommands share them."""
from __future__ import annotations

import argparse

from engine.spec.heads.registry import HEAD_METHODS
from engine.spec.training.calibrate import calibration_methods
from engine.spec.training.evaluate import EVAL_DRAFTERS


# ---------------------------------------------------------------- arguments

def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=HEAD_METHODS)
    p.add_argument("--target", default=None, help="target model (HF dir or .gguf; default: bundled SmolLM2)")
    p.add_argument("--out", required=True, help="output directory of the trained head")
    p.add_argument("--work-dir", default=None, help="cache for responses and features (default OUT/data)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="the target's dtype for responses and features (serve the head in the same); "
                        "auto: bfloat16 where the device multiplies it natively")
    p.add_argument("--device", default="cpu", help="torch device for the target and training (cpu, cuda)")
    add_data_arguments(p)
    g = p.add_argument_group("head")
    g.add_argument("--block-size", type=int, default=7)
    g.add_argument("--layers", type=int, default=None, help="draft layers (default 1 for eagle3, 2 otherwise)")
    g.add_argument("--aux-layers", default=None, help="comma-separated target layers (default low,mid,high)")
    g.add_argument("--markov-rank", type=int, default=None, help="DSpark's Markov head rank (0: off, an ablation)")
    g.add_argument("--intermediate-size", type=int, default=None)
    g.add_argument("--draft-vocab", type=int, default=0,
                   help="draft vocabulary: the N tokens the target picks most often in the training "
                        "data (0: the whole vocabulary)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000)
    g.add_argument("--train-tokens", type=int, default=None,
                   help="budget in training tokens (anchors: one per block); sets --steps")
    g.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    g.add_argument("--init-from", default=None, metavar="CHECKPOINT_DIR",
                   help="warm start: a trained head's weights (same method and shape) and its draft "
                        "vocabulary (kept, whatever this run's data would pick), a fresh optimizer and a new "
                        "schedule over --train-tokens more anchors; its log goes on counting from the "
                        "checkpoint's anchors (for runs whose train_state.pt is gone)")
    g.add_argument("--stop-at-step", type=int, default=None,
                   help="stop at this step, the learning rate still scheduled for the whole budget (ablations)")
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--train-seed", type=int, default=None,
                   help="seed of the training data order and initialisation (default --seed, which also "
                        "picks the data): a warm start with another one draws other anchors than its first run")
    g.add_argument("--warmup-steps", type=int, default=20,
                   help="linear learning-rate warm-up; longer for a warm start, whose fresh optimizer "
                        "moves every weight by about lr per step at first")
    g.add_argument("--sequences-per-step", type=int, default=4)
    g.add_argument("--anchors", type=int, default=16, help="blocks per sequence per step")
    g.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="bf16: autocast (float32 master weights); auto: bf16 where native")
    g.add_argument("--dspark-loss-weights", default="0.1,0.9,1.0", help="DSpark CE,L1,BCE weights (ablations)")
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--eval-sequences", type=int, default=16, help="sequences per set per evaluation")
    g.add_argument("--checkpoint-every", type=int, default=50)
    _add_calibration_arguments(g)
    _add_common(p)


def _add_calibration_arguments(g) -> None:
    g.add_argument("--calibration-tokens", type=int, default=128,
                   help="tokens per held-out prompt decoded at T=1 to fit the sampled STS set")
    g.add_argument("--calibration", default="logistic", type=_calibration_methods, metavar="METHOD|0=METHOD,1=METHOD",
                   help="logistic: a scale and a logit shift per position by log-loss (default); "
                        "logistic-peak: the same reading the draft distribution's peak too (heads with a "
                        "confidence head); sts: temperatures alone, as design/speculation.md s.3 states it; "
                        "or one per temperature, e.g. 0=logistic-peak,1=logistic")


def _calibration_methods(spec: str) -> dict[str, str]:
    try:
        return calibration_methods(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft-model", required=True, help="head checkpoint directory to recalibrate")
    p.add_argument("--out", default=None, help="write the recalibrated head here (default: in place)")
    p.add_argument("--target", default=None, help="target model (default: bundled SmolLM2)")
    p.add_argument("--work-dir", required=True, help="cache for the held-out responses and features")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="the target's dtype (the one the head was trained with)")
    p.add_argument("--device", default="cpu")
    add_data_arguments(p, heldout_only=True)
    _add_calibration_arguments(p)
    _add_common(p)


def add_data_arguments(p: argparse.ArgumentParser, heldout_only: bool = False) -> None:
    """Where the training, held-out and evaluation data come from
    (pipeline.py); `heldout_only`: the held-out set and how it is generated."""
    g = p.add_argument_group("data")
    if not heldout_only:
        g.add_argument("--data", default="sharegpt:400", help="prompts whose responses the target regenerates, "
                       "e.g. sharegpt:400 (train split); empty for none")
        g.add_argument("--conversations", type=int, default=0,
                       help="ShareGPT train-split conversations teacher-forced as they are (all turns)")
        g.add_argument("--skip-conversations", type=int, default=0,
                       help="train-split conversations passed over before --conversations are taken: new "
                            "conversations for a head trained on an earlier data folder's first ones")
    g.add_argument("--heldout-data", default="sharegpt:16", help="held-out prompts (test split): best/ and STS")
    if not heldout_only:
        g.add_argument("--eval-data", default="", help="evaluation-only sets logged during training, "
                       "e.g. mtbench:24,humaneval:24 (never trained on)")
        g.add_argument("--responses", default="target", choices=("target", "dataset"),
                       help="target: regenerate with the target (default); dataset: ShareGPT replies, "
                            "labels from the target's argmax")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--gen-temperature", type=float, default=0.0)
    g.add_argument("--gen-batch", type=int, default=16)
    g.add_argument("--gen-threads", type=int, default=1, help="torch threads while regenerating responses")
    g.add_argument("--max-prompt-tokens", type=int, default=512)
    g.add_argument("--max-len", type=int, default=1024, help="tokens per training sequence")
    g.add_argument("--top-k", type=int, default=20, help="target log-probs kept per token (soft labels)")
    if not heldout_only:
        g.add_argument("--prepare-only", action="store_true", help="stop once the data is cached")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft-model", required=True, help="head checkpoint directory")
    p.add_argument("--target", default=None, help="target model (default: bundled SmolLM2)")
    p.add_argument("--data", default="humaneval:8,mtbench:8,sharegpt:8", help="prompts (test split)")
    p.add_argument("--whole-eval-sets", action="store_true",
                   help="MT-Bench and HumanEval prompts from the whole set, not only the test split (they are "
                        "never trained or fitted on); ShareGPT's stay in its test split")
    p.add_argument("--block-size", type=int, default=7)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-prompt-tokens", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="requests decoded together")
    p.add_argument("--report", default=None, help="write the JSON report here too")
    p.add_argument("--records", action="store_true",
                   help="put every verification step's raw confidences and accepted count in the report "
                        "(to fit or compare calibrations offline), and each one's request number and engine step "
                        "(record_origins, to replay an online calibrator in order)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="the target's dtype (the one the head was trained with)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--drafter", default="head", choices=EVAL_DRAFTERS,
                   help="the head alone, n-gram alone, or the hybrid of both (as --speculative-method hybrid)")
    _add_common(p)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machines: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines instead)")
