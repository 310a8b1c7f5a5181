"""Toolkit that trains and evaluates draft heads (engine/spec/heads/).

Pipeline: data.py (prompts) -> generate.py (the target's own responses)
-> features.py (one teacher-forced pass, hidden states cached to disk)
-> train.py (the loop; per-family recipes.py: ttt.py for EAGLE-3,
blocks.py for the block heads, losses.py) -> calibrate.py (STS) ->
evaluate.py (accepted length tau, ECE, AUROC; real decoding goes through
the server's LLMEngine). cli.py wires it into `specserve`.
"""
