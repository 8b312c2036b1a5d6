"""Learner side: DeepSpeed learner actors and the weight push to inference workers."""
