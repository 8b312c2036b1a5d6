"""Step 8 of the data path, both ends: the weight group (`group`: a gloo/NCCL process group between learner rank 0
and every inference engine rank, with checksums) and the push that drives it and proves it (`push.WeightSync`).
The learner sends through it, the rollout engines receive through it; neither side imports the other."""
