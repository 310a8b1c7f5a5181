"""The n-gram drafter's confidence prior: the chance that the draft at
position j (0-based) survives given that the ones before it did, after a
match of n tokens (row n - 1). Fitted, not hand-set; regenerate with:

    python -m tools.fit_ngram_confidence runs/heads-smollm2/data/responses-train-t0-n256.jsonl --check runs/heads-smollm2/data/responses-heldout-t0-n256.jsonl --out engine/spec/ngram_prior.py

(17872 replayed decode steps, 30516 drafts reached.)
"""

SURVIVAL_BY_MATCH_AND_POSITION = (
    (0.2163, 0.5779, 0.7336, 0.7628, 0.8195, 0.8138, 0.8640, 0.8200, 0.8069, 0.7071, 0.8118, 0.9274, 0.8770, 0.9190, 0.8620, 0.9353),
    (0.5020, 0.6415, 0.7925, 0.8227, 0.8686, 0.8890, 0.9049, 0.8894, 0.8808, 0.8811, 0.9216, 0.8917, 0.9454, 0.8868, 0.9658, 0.9763),
    (0.6557, 0.7261, 0.8166, 0.8298, 0.8691, 0.8926, 0.9292, 0.9207, 0.9155, 0.9661, 0.9495, 0.9275, 0.9432, 0.8644, 0.9902, 0.9655),
    (0.8883, 0.9437, 0.9636, 0.9641, 0.9759, 0.9613, 0.9735, 0.9646, 0.9737, 0.9745, 0.9647, 0.9709, 0.9580, 0.9501, 0.9696, 0.9821),
)
