"""Learning experiments on the synthetic set, every run through `vmae2.train.train`.

    budget   learning curves of `tiny` on clips held in memory (pre-training and fine-tuning probes)
    table1   the paper's Table 1 in small: encoder-only vs dual masking vs scratch
    distill  a student distilled without labels against the same student trained on the labels
"""
