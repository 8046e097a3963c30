"""Blueprint augmentation, the library of the `augment` stage (distill/stages/augment.py):
hard negatives → analogical transfers → gated ORPO pairs.

plan        the transfer plan (YAML): which targets each hard negative is moved to
schema      the hard-negative input and the teacher's structured output (`BlueprintOutput`)
prompt      the blueprint and verify requests, filled from distill/resources/prompts
gates       the quality gates, each a pure pass/refuse with a reason
decontam    character n-gram overlap against evaluation and seed items
dedup       near-duplicates among the generated problems
candidates  a candidate's way through the gates, the pairs and refusals it ends as, metrics, summary
"""
