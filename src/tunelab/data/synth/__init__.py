"""Data made by a teacher model: Self-Instruct, Evol-Instruct, answers (distillation data), preference pairs.

- `teacher`: any model tunelab loads, or any OpenAI-compatible endpoint (key from the environment).
- `output`: records appended as they are made, so an interrupted run resumes without redoing any.
- `self_instruct`, `evol`, `answers`: the methods, each with its filters and the count each filter dropped.
"""
