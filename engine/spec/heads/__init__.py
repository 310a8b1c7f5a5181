"""Draft heads that read the target's hidden states: EAGLE-3, DFlash, DSpark.

One module per head family (eagle3.py, dflash.py, dspark.py; block.py is
the backbone DFlash and DSpark share), registered in registry.py, the one
list of head methods. config.py holds HeadConfig, layers.py the attention
pieces, base.py what every head has, drafting.py the per-request state a
HeadDrafter keeps, checkpoint.py the files. Training-only code (training
time test, batched training passes, initialisation) is in
engine/spec/training/.

This package's __init__ imports nothing: engine/config.py reads the
registry without paying for torch.

All heads share the target's frozen token embedding and LM head. Those are
never stored in a head checkpoint: `attach_target` points a head at the
target's tensors at load time, so a checkpoint holds only the head's own
weights (a few MB) and refuses a target of a different shape.

Conventions (the same in training and serving; design/speculation.md s.2):
- `feats_i` is the concatenation of the target's `aux_layers` outputs at
  sequence position i, [A * H].
- EAGLE-3: context entry i is (feats_i, token_{i+1}) at position i; its
  output predicts token_{i+2}. Drafting continues from the last entry with
  the head's own output hidden state in place of the fused features.
- DFlash: the block is the anchor (the last emitted token, at position a,
  which has no features yet) followed by `block_size` mask tokens; the
  outputs at the mask positions predict the drafts.
- DSpark: the anchor itself is the first prediction position, so the block
  is the anchor and `block_size - 1` masks; a Markov head adds a bigram
  term per position and a confidence head predicts survival.
- DFlash/DSpark blocks attend bidirectionally among themselves and to the
  projected target context of positions < a (extra keys/values per layer).
"""
