"""Toolkit that trains and evaluates draft heads (engine/spec/heads.py).

Pipeline: data.py (prompts) -> generate.py (the target's own responses)
-> features.py (one teacher-forced pass, hidden states cached to disk)
-> train.py (per-method losses) -> calibrate.py (STS) -> evaluate.py
(accepted length tau, ECE, AUROC). cli.py wires it into `specserve`.
"""
